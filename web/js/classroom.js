// The classroom view: the three SAM stages with live figures, the three candidate masks with their
// scores, and the chosen mask's low-res logits as a heatmap.

import { LOW_RES_SIDE } from "./mask-math.js";

const PLANE = LOW_RES_SIDE * LOW_RES_SIDE;
const $ = (id) => document.getElementById(id);

export function formatBytes(bytes) {
  if (bytes == null) return "–";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 ** 2).toFixed(2)} MB`;
}

export const formatMs = (ms) => (ms == null ? "–" : ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`);

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Paints a 256x256 thresholded logit map into a canvas (white = mask). */
export function paintLowResMask(canvas, logits) {
  canvas.width = LOW_RES_SIDE;
  canvas.height = LOW_RES_SIDE;
  const context = canvas.getContext("2d");
  const image = context.createImageData(LOW_RES_SIDE, LOW_RES_SIDE);
  const words = new Uint32Array(image.data.buffer);
  for (let i = 0; i < PLANE; i++) words[i] = logits[i] > 0 ? 0xffffffff : 0xff2a2a2a;
  context.putImageData(image, 0, 0);
}

/** Diverging colours: blue (negative) – white (0) – red (positive), scaled by the largest |logit|. */
function paintHeatmap(canvas, logits) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(LOW_RES_SIDE, LOW_RES_SIDE);
  let low = Infinity, high = -Infinity;
  for (let i = 0; i < PLANE; i++) {
    if (logits[i] < low) low = logits[i];
    if (logits[i] > high) high = logits[i];
  }
  const scale = Math.max(Math.abs(low), Math.abs(high)) || 1;
  const data = image.data;
  for (let i = 0; i < PLANE; i++) {
    const t = Math.max(-1, Math.min(1, logits[i] / scale));
    const fade = Math.round(255 * (1 - Math.abs(t)));
    data[i * 4] = t > 0 ? 220 + Math.round(35 * (1 - t)) : fade;
    data[i * 4 + 1] = fade;
    data[i * 4 + 2] = t < 0 ? 220 + Math.round(35 * (1 + t)) : fade;
    data[i * 4 + 3] = 255;
  }
  context.putImageData(image, 0, 0);
  return [low, high];
}

export class Classroom {
  constructor() {
    this.section = $("classroom");
    this.decodeTimes = [];
  }

  get visible() {
    return !this.section.hidden;
  }

  show(on) {
    this.section.hidden = !on;
  }

  setModel({ modelType, weights }) {
    $("cls-model").textContent = `${modelType} (${weights} weights)`;
  }

  setProvider(text) {
    $("cls-provider").textContent = text;
  }

  setImage({ encodeMs, cacheHit, bytes, wireBytes, format, downloadMs }) {
    $("cls-encode").textContent = cacheHit ? `none now: from the cache (first encode ${formatMs(encodeMs)})` : formatMs(encodeMs);
    const sent = wireBytes && wireBytes !== bytes ? `, ${formatBytes(wireBytes)} sent compressed` : "";
    $("cls-bytes").textContent = bytes == null ? "–" : `${formatBytes(bytes)} ${format}${sent}`;
    $("cls-download").textContent = formatMs(downloadMs);
    // The candidates and heatmap on show belong to the previous image.
    this.lastResult = null;
    this.lastChosen = null;
    this.refresh();
  }

  /** Records one decode and, when visible, shows its candidates and logits. */
  addDecode(result, chosen) {
    this.decodeTimes.push(result.decodeMs);
    if (this.decodeTimes.length > 20) this.decodeTimes.shift();
    this.lastResult = result;
    this.lastChosen = chosen;
    if (this.visible) this.refresh();
  }

  refresh() {
    $("cls-decode").textContent = formatMs(this.decodeTimes.at(-1));
    $("cls-decode-median").textContent = this.decodeTimes.length ? formatMs(median(this.decodeTimes)) : "–";
    const result = this.lastResult;
    const holder = $("cls-candidates");
    holder.replaceChildren();
    if (!result) {
      const heatmap = $("cls-heatmap");
      heatmap.getContext("2d").clearRect(0, 0, heatmap.width, heatmap.height);
      $("cls-heatmap-range").textContent = "–";
      return;
    }
    const k = result.scores.length;
    const shown = k === 4 ? [1, 2, 3] : [0];
    for (const c of shown) {
      const figure = document.createElement("figure");
      const canvas = document.createElement("canvas");
      canvas.setAttribute("role", "img");
      canvas.setAttribute("aria-label", `Candidate ${c}: predicted IoU ${result.scores[c].toFixed(3)}`);
      paintLowResMask(canvas, result.lowRes.subarray(c * PLANE, (c + 1) * PLANE));
      if (c === this.lastChosen) canvas.classList.add("best");
      const caption = document.createElement("figcaption");
      caption.textContent = `#${c} · IoU ${result.scores[c].toFixed(3)}${c === this.lastChosen ? " · shown" : ""}`;
      figure.append(canvas, caption);
      holder.append(figure);
    }
    const chosen = this.lastChosen ?? result.best;
    const [low, high] = paintHeatmap($("cls-heatmap"), result.lowRes.subarray(chosen * PLANE, (chosen + 1) * PLANE));
    $("cls-heatmap-range").textContent = `logits from ${low.toFixed(2)} to ${high.toFixed(2)}; mask where > 0`;
  }
}
