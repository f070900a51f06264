// Downloads a large file that does not change (the decoder model, an image's embedding) over a connection that
// may drop, as a phone's does: a dropped or cut-short transfer is retried, and it resumes where it stopped (an
// HTTP Range request guarded by If-Range) when the server allows it, so a visitor on a weak network does not
// fetch megabytes twice. The bytes are checked against their SHA-256 when one is given.

import { joinChunks, readChunks } from "./read-body.js";

const DOWNLOAD_ATTEMPTS = 5;
const FIRST_WAIT_MS = 500; // doubled before each further attempt: 7.5 s of waiting in all

/** A download that cannot succeed by trying again (an HTTP error other than a transient one, wrong bytes). */
export class DownloadError extends Error {}

/** Answers worth another try: the server or a proxy was briefly unable to answer. */
const TRANSIENT = new Set([408, 425, 429, 500, 502, 503, 504]);

/**
 * @param {string} url
 * @param {object} options
 *   onProgress(loaded, total, retry): bytes received so far (of total when known); `retry` is {attempt,
 *     attempts, resumed} while another attempt starts after a dropped transfer, else null;
 *   sha256: the expected hex digest (checked when the browser can hash: secure contexts);
 *   what: the file's name in messages (default "the file");
 *   errorFor(response): the error to throw for an answer that is neither the file nor a transient failure
 *     (default: a DownloadError naming the HTTP status);
 *   onResponse(response): called with each answer that brings bytes (e.g. to read its headers)
 * @returns {Promise<Uint8Array>} the whole file
 */
export async function downloadResumable(url, {
  onProgress = () => {}, sha256 = null, what = "the file", errorFor = null, onResponse = () => {},
} = {}) {
  const attempts = DOWNLOAD_ATTEMPTS;
  let chunks = [];
  let loaded = 0;
  let total = 0;
  let validator = null; // the ETag (or Last-Modified) the first bytes came with: a resume must match it
  let resumable = false;
  let restartedForChecksum = false;
  let refusal = null; // the server's final no (errorFor): not tried again
  for (let attempt = 1; ; attempt++) {
    const resuming = resumable && loaded > 0;
    const headers = resuming ? { Range: `bytes=${loaded}-`, "If-Range": validator } : {};
    try {
      const response = await fetch(url, { headers });
      if (response.status === 206) {
        if (!resuming || startOf(response) !== loaded) {
          resumable = false; // a part we did not ask for: start again, without Range
          throw new Error("the server sent another part of the file than asked");
        }
        // Resumed: the server sends the rest.
      } else if (response.ok) {
        // The whole file (a first attempt, a server that ignores Range, or a file changed since: If-Range).
        chunks = [];
        loaded = 0;
        // A compressed body's Content-Length counts the bytes sent, not the bytes read (nor do byte ranges);
        // this app's server gives the bytes read as X-Uncompressed-Length.
        const encoded = Boolean(response.headers.get("Content-Encoding"));
        const length = Number(response.headers.get(encoded ? "X-Uncompressed-Length" : "Content-Length")) || 0;
        total = length;
        validator = response.headers.get("ETag") || response.headers.get("Last-Modified");
        resumable = !encoded && response.headers.get("Accept-Ranges") === "bytes" && Boolean(validator) && total > 0;
      } else if (TRANSIENT.has(response.status)) {
        throw new Error(`HTTP ${response.status}`);
      } else {
        refusal = errorFor ? await errorFor(response)
          : new DownloadError(`${capital(what)} could not be downloaded (HTTP ${response.status}).`);
        throw refusal;
      }
      onResponse(response);
      await readChunks(response, chunks, (n) => {
        loaded += n;
        onProgress(loaded, total, null);
      });
      if (total && loaded < total) throw new Error(`the transfer stopped after ${loaded} of ${total} bytes`);
      const bytes = joinChunks(chunks, loaded);
      if (sha256 && globalThis.crypto?.subtle) {
        const digest = await sha256Hex(bytes);
        if (digest !== sha256.toLowerCase()) {
          // A resume stitched bytes of two versions, or the network damaged them: once more, from the start.
          if (restartedForChecksum) throw new DownloadError(`${capital(what)} arrived damaged (its SHA-256 does not match).`);
          restartedForChecksum = true;
          chunks = [];
          loaded = 0;
          resumable = false;
          throw new Error("its SHA-256 did not match");
        }
      }
      return bytes;
    } catch (error) {
      if (error instanceof DownloadError || error === refusal) throw error;
      const lastProblem = error.message || String(error);
      if (attempt >= attempts) {
        throw new DownloadError(`${capital(what)} could not be downloaded: ${attempts} attempts failed (the last: ${lastProblem}).`);
      }
      onProgress(loaded, total, { attempt: attempt + 1, attempts, resumed: resumable && loaded > 0 });
      await new Promise((resolve) => setTimeout(resolve, FIRST_WAIT_MS * 2 ** (attempt - 1)));
    }
  }
}

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The first byte of a 206 answer ("bytes 1000-4999/5000"), or -1. */
function startOf(response) {
  const match = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(response.headers.get("Content-Range") || "");
  return match ? Number(match[1]) : -1;
}

const capital = (text) => text.charAt(0).toUpperCase() + text.slice(1);
