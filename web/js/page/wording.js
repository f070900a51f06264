// The page's sentences: the "Ready" line after an image opens, and what a decode selected (for the live region).

import { formatBytes, formatMs } from "../format.js";
import { maskStats } from "../mask-math.js";

/**
 * One line per finished image: the upload, the server's encode and the embedding's download, each with its
 * own figure (the embedding's size is the one its progress counted; the bytes sent, if compressed, beside it).
 * @param {object} loaded SamClient.load's answer {info, embedding, uploadMs}
 */
export function readyStatus({ info, embedding, uploadMs }, touch) {
  const pointing = touch ? "tap the image" : "hover over the image";
  const encoded = info.cache_hit ? "Already encoded (from the server's cache)" : `Encoded in ${formatMs(info.encode_ms)}`;
  const sent = embedding.wireBytes && embedding.wireBytes !== embedding.bytes ? `, ${formatBytes(embedding.wireBytes)} sent` : "";
  return `Ready: ${pointing}. Uploaded in ${formatMs(uploadMs)}. ${encoded}. ` +
    `Downloaded the embedding ${formatBytes(embedding.bytes)}${sent} in ${formatMs(embedding.ms)}.`;
}

/** "Selected 12,345 px: candidate 2 of 3, predicted IoU 0.93. Decoded in 15 ms." */
export function describeSelection(result, chosen, size) {
  const { area } = maskStats(result.masks[chosen], size);
  const which = result.candidates.length > 1
    ? `candidate ${result.candidates.indexOf(chosen) + 1} of ${result.candidates.length}` : "refined";
  const what = area ? `Selected ${area.toLocaleString("en")} px` : "Nothing selected here";
  return `${what}: ${which}, predicted IoU ${result.scores[chosen].toFixed(2)}. Decoded in ${formatMs(result.decodeMs)}.`;
}
