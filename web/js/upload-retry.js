// Uploads an image with progress; a busy server's 503 is retried after its Retry-After, 3 times at most, and a
// dropped connection (a phone's) 3 times, a second more before each. Sending the image again is safe: the server
// keys it by its pixels, so a copy that did arrive is not encoded twice.

import { DROP_RETRIES, uploadImage } from "./api.js";
import { formatBytes } from "./format.js";

const BUSY_RETRIES = 3;
const BUSY_WAIT_MAX_S = 15;

/**
 * @param {Blob} blob
 * @param {string} name
 * @param {object} options {isCurrent(): false once another image replaced this one (stop reporting and
 *   retrying), onStatus(text, progress), server: the app's URL when not this page's}; progress is a fraction,
 *   null for "busy, no figure"
 * @returns {Promise<{answer: object, uploadMs: number}>} the server's answer to POST /api/images and how long
 *   the bytes took to send (the server's encoding after them not included)
 */
export async function uploadWhenServerFree(blob, name, { isCurrent, onStatus, server = null }) {
  let drops = 0;
  for (let attempt = 0; ; attempt++) {
    let encodingTimer = null;
    const started = performance.now();
    let uploadMs = null;
    try {
      const answer = await uploadImage(
        blob,
        name,
        (loaded, all) => isCurrent() && onStatus(`Uploading… ${formatBytes(loaded)} of ${formatBytes(all)}`, all ? loaded / all : null),
        () => {
          const sent = performance.now();
          uploadMs = sent - started;
          encodingTimer = setInterval(() => {
            if (isCurrent()) onStatus(`The server is encoding the image… ${((performance.now() - sent) / 1000).toFixed(1)} s`, null);
          }, 100);
        },
        { server },
      );
      return { answer, uploadMs: uploadMs ?? performance.now() - started };
    } catch (error) {
      if (error.code === "dropped" && drops < DROP_RETRIES && isCurrent()) {
        drops++;
        attempt--; // not a busy answer
        onStatus(`The connection dropped while uploading; trying again (attempt ${drops + 1} of ${DROP_RETRIES + 1})…`, null);
        await new Promise((resolve) => setTimeout(resolve, 1000 * drops));
        if (!isCurrent()) throw error;
        continue;
      }
      if (error.retryAfterS == null || attempt >= BUSY_RETRIES || !isCurrent()) throw error;
      const waitS = Math.min(Math.max(error.retryAfterS, 1), BUSY_WAIT_MAX_S);
      for (let left = waitS; left > 0 && isCurrent(); left--) {
        onStatus(`The server is busy with other images; trying again in ${left} s…`, null);
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
      if (!isCurrent()) throw error;
    } finally {
      clearInterval(encodingTimer);
    }
  }
}
