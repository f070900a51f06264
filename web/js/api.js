// The backend's HTTP API (docs/ARCHITECTURE.md). Every failure becomes an ApiError with plain words.

import { downloadResumable } from "./resumable-download.js";

export class ApiError extends Error {
  constructor(message, { status = 0, code = "network", retryAfterS = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS; // the server's Retry-After (busy), in seconds, or null
  }
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: fall through to the status text
  }
  const message = body?.message || `The server answered ${response.status} ${response.statusText}.`;
  return new ApiError(message, { status: response.status, code: body?.error || "http" });
}

/**
 * The URL of an API path: relative to the page (the app itself), or to `server` (an embedding page talking
 * to the app on another origin; fetch and XHR then send no credentials there).
 */
export const apiUrl = (path, server = null) => (server ? new URL(path, server).href : path);

/** How many more times a request whose connection dropped (a phone's) is sent, where that is safe. */
export const DROP_RETRIES = 3;

/**
 * fetch, sent again when the connection drops before any answer (a phone's): DROP_RETRIES more times, after 0.5,
 * 1 and 2 s. Only for requests that are safe to repeat.
 * @param {(retry: {attempt: number, attempts: number}) => void} onRetry another attempt starts
 */
async function fetchAgainIfDropped(url, init, onRetry) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fetch(url, init);
    } catch {
      if (attempt > DROP_RETRIES) throw new ApiError(`The server cannot be reached (${attempt} attempts).`);
      onRetry({ attempt: attempt + 1, attempts: DROP_RETRIES + 1 });
      await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** (attempt - 1)));
    }
  }
}

async function getJson(url) {
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" } });
  } catch {
    throw new ApiError("The server cannot be reached. Is it running?");
  }
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

/** GET /api/model: model type, weights and the decoder files. */
export const fetchModelInfo = ({ server = null } = {}) => getJson(apiUrl("api/model", server));

/** GET /api/gallery: [{name, url, width, height, license, source}]. */
export const fetchGallery = ({ server = null } = {}) => getJson(apiUrl("api/gallery", server));

/**
 * POST /api/images with upload progress (fetch cannot report upload progress, XMLHttpRequest can).
 * @param {Blob} blob the image to encode
 * @param {string} filename
 * @param {(loaded: number, total: number) => void} onUploadProgress
 * @param {() => void} onUploaded called once the bytes are sent and the server is encoding
 * @param {{server?: string}} options the app's URL when it is not this page's
 */
export function uploadImage(blob, filename, onUploadProgress = () => {}, onUploaded = () => {}, { server = null } = {}) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("image", blob, filename);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl("api/images", server));
    xhr.responseType = "json";
    xhr.upload.onprogress = (event) => onUploadProgress(event.loaded, event.lengthComputable ? event.total : blob.size);
    xhr.upload.onload = () => onUploaded();
    xhr.onerror = () => reject(new ApiError("The upload failed: the server cannot be reached.", { code: "dropped" }));
    xhr.ontimeout = () => reject(new ApiError("The server took too long to encode the image.", { code: "timeout" }));
    xhr.onload = () => {
      const body = xhr.response;
      if (xhr.status >= 200 && xhr.status < 300 && body) resolve(body);
      else {
        const message = body?.message || `The upload failed (HTTP ${xhr.status}).`;
        const retryAfter = Number.parseInt(xhr.getResponseHeader("Retry-After"), 10);
        reject(new ApiError(message, { status: xhr.status, code: body?.error || "http",
          retryAfterS: xhr.status === 503 && Number.isFinite(retryAfter) ? retryAfter : null }));
      }
    };
    xhr.send(form);
  });
}

/**
 * Downloads an embedding, reporting bytes as they arrive; a dropped or cut-short transfer is tried again
 * (resumable-download.js: the server gzips embeddings, so a retry starts over). The total comes from
 * X-Uncompressed-Length (fetch counts decompressed bytes), else from Content-Length.
 * @param {(loaded: number, total: number) => void} onProgress
 * @param {(retry: {attempt: number, attempts: number}) => void} onRetry another attempt starts
 * @returns {Promise<{buffer: ArrayBuffer, bytes: number, wireBytes: number, ms: number}>}
 */
export async function fetchEmbedding(url, onProgress = () => {}, onRetry = () => {}) {
  const started = performance.now();
  let wireBytes = 0;
  const bytes = await downloadResumable(url, {
    what: "the embedding",
    errorFor: errorFrom,
    onResponse: (response) => { wireBytes = Number(response.headers.get("Content-Length")) || 0; },
    onProgress: (loaded, total, retry) => (retry ? onRetry(retry) : onProgress(loaded, Math.max(total, loaded))),
  });
  const loaded = bytes.byteLength;
  return { buffer: bytes.buffer, bytes: loaded, wireBytes: wireBytes || loaded, ms: performance.now() - started };
}

/**
 * POST /api/images/<id>/everything: 202 {job_id, status_url, events_url}. Crop layers segment tiles of the image's
 * pixels, which the server does not keep: the image (the uploaded bytes) then goes with the job, as
 * multipart {parameters: JSON, image}. Sent again when the connection drops (onRetry as fetchAgainIfDropped's):
 * the server answers a repeated (image, parameters) with the job it already has, so a start that did reach it
 * starts nothing twice.
 */
export async function startEverything(imageId, parameters = {}, image = null, { server = null, onRetry = () => {} } = {}) {
  let body = JSON.stringify(parameters);
  const headers = { "Content-Type": "application/json" };
  if (image && parameters.crop_n_layers > 0) {
    body = new FormData();
    body.append("parameters", JSON.stringify(parameters));
    body.append("image", image, "image");
    delete headers["Content-Type"]; // the browser sets multipart's boundary
  }
  const url = apiUrl(`api/images/${encodeURIComponent(imageId)}/everything`, server);
  const response = await fetchAgainIfDropped(url, { method: "POST", headers, body }, onRetry);
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

/** DELETE /api/everything/<job_id>: stops the job on the server (a job already finished is left as it is). */
export async function cancelEverything(jobId, { server = null } = {}) {
  let response;
  try {
    response = await fetch(apiUrl(`api/everything/${encodeURIComponent(jobId)}`, server), { method: "DELETE" });
  } catch {
    throw new ApiError("The server cannot be reached.");
  }
  if (!response.ok && response.status !== 404 && response.status !== 409) throw await errorFrom(response);
}

/** GET status_url: {status, progress, result?}. */
export async function fetchJobStatus(statusUrl) {
  return getJson(statusUrl);
}

/**
 * POST /api/images/<id>/text: the instances of `text` ("dog, cat") in the image, {instances: [{box: [x0, y0,
 * x1, y1] in the uploaded image's pixels, score, label}], model, ms}. The server keeps no pixels, so the
 * image (the uploaded bytes) goes along. The request changes nothing on the server, so one whose connection drops
 * is sent again (onRetry tells when).
 * @param {{box_threshold?: number, text_threshold?: number, max_instances?: number}} parameters
 */
export async function findText(imageId, text, image, parameters = {}, { server = null, onRetry = () => {} } = {}) {
  const body = new FormData();
  body.append("text", text);
  body.append("parameters", JSON.stringify(parameters));
  body.append("image", image, "image");
  const url = apiUrl(`api/images/${encodeURIComponent(imageId)}/text`, server);
  const response = await fetchAgainIfDropped(url, { method: "POST", body }, onRetry);
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}
