// The Segment Anything client without any page: decoder start-up, opening an image (upload, embedding), the editor.
//
// The app page and the embeddable element both drive one of these; neither talks to the worker or the API
// on its own.

import { apiUrl, fetchEmbedding } from "./api.js";
import { DecoderClient } from "./decoder/decoder-client.js";
import { startDecoder } from "./decoder/decoder-startup.js";
import { SegmentEditor } from "./editor.js";
import { formatBytes } from "./format.js";
import { prepareImage } from "./image-input.js";
import { uploadWhenServerFree } from "./upload-retry.js";

export class SamClient {
  /**
   * @param {object} options {onStatus(text, progress, task): progress is a fraction, null (busy, no figure)
   *   or undefined (no bar), task "decoder" (its download) or "image" (opening one); onStage(name) the SAM
   *   stage running for the image: "encoder", "transfer", or null once it is ready; onEngine(started) the
   *   decoder now runs differently from what start() answered (started: the new answer, as start()'s);
   *   editor: the SegmentEditor's handlers; server: the app's URL when it is not this page's (the
   *   <sam-segmenter> element on another tool's page)}
   */
  constructor({ onStatus = () => {}, onStage = () => {}, onEngine = () => {}, editor = {}, server = null } = {}) {
    this.onStatus = onStatus;
    this.onStage = onStage;
    this.onEngine = onEngine;
    this.server = server;
    this.decoder = new DecoderClient();
    this.editor = new SegmentEditor(this.decoder, editor);
    this.decoderReady = null; // Promise of startDecoder's answer
    this.decoderInfo = null; // its answer, once there
    this.image = null; // {name, original, originalSize, upload, uploadSize, downscaled, id, token}
    this.loadToken = 0;
  }

  /** Opens the decoder (see decoder-startup.js); image loads wait for it. */
  start(options) {
    const onEngine = (started) => {
      this.decoderInfo = started;
      this.onEngine(started);
    };
    this.decoderReady = startDecoder(this.decoder, { ...options, server: this.server }, (text, progress) => this.onStatus(text, progress, "decoder"), onEngine);
    this.decoderReady.then((answer) => { this.decoderInfo = answer; }, () => {}); // failures: the caller reports it
    return this.decoderReady;
  }

  /** False once another image was opened after `image`: its answers belong to no image on screen. */
  isCurrent(image) {
    return image?.token === this.loadToken;
  }

  /**
   * Decodes a picked/dropped/pasted image and makes it the one being edited (nothing of the previous one is
   * left in flight). Resolves null when another image was opened meanwhile; rejects (ImageInputError) when
   * the file is no image, and the previous image stays as it was.
   */
  async prepare(blob, name) {
    const token = ++this.loadToken;
    const wasReady = this.editor.ready;
    this.editor.interrupt();
    let prepared;
    try {
      prepared = await prepareImage(blob, name);
    } catch (error) {
      if (token === this.loadToken) this.editor.ready = wasReady;
      throw error;
    }
    if (token !== this.loadToken) return null;
    // The previous photo's decoded pixels (width × height × 4 bytes, outside the JS heap) go now, not whenever
    // the collector next looks: a session of many photos on a phone must not pile them up.
    this.image?.original?.close?.();
    this.image = { ...prepared, id: null, token };
    this.editor.begin(prepared.uploadSize);
    return this.image;
  }

  /**
   * Masks for many independent prompts on the open image (e.g. a text query's boxes), in as few decoder runs
   * as the decoder allows; see DecoderClient.decodeMany. Prompts are in the image's pixels; masks are at its
   * size unless options.outSize says otherwise. Each prompt's candidates equal those of its own decode.
   * @returns {Promise<{results: Array<{scores, lowRes, candidates, best, masks}>, runs, decodeMs, postMs}>}
   */
  decodeMany(prompts, options = {}) {
    if (!this.editor.ready || !this.image) return Promise.reject(new Error("Open an image first."));
    return this.decoder.decodeMany(prompts, { outSize: this.image.uploadSize, ...options });
  }

  /**
   * Uploads the prepared image, downloads its embedding into the worker; the editor is ready after.
   * @param {object} options {format: "f16"|"int8"|"f32" (else the server's choice)}
   * @returns {Promise<{info, embedding, uploadMs, dtype}|null>} the server's answer, the embedding download
   *   ({bytes, wireBytes, ms}), the upload's time and the embedding's number format; null when another
   *   image was opened meanwhile
   */
  async load(image, { format = null } = {}) {
    const isCurrent = () => this.isCurrent(image);
    const onStatus = (text, progress) => this.onStatus(text, progress, "image");
    this.onStage("encoder");
    onStatus(`Uploading… 0 B of ${formatBytes(image.upload.size)}`, 0);
    const { answer: info, uploadMs } = await uploadWhenServerFree(image.upload, image.name, { isCurrent, onStatus, server: this.server });
    if (!isCurrent()) return null;
    const [h, w] = image.uploadSize;
    if (info.height !== h || info.width !== w) {
      // The server decoded another size than the browser (e.g. an EXIF rotation it ignored).
      throw new Error(`The server read the image as ${info.width}×${info.height}, the browser as ${w}×${h}. ` +
        "Try saving the image as PNG first.");
    }
    image.id = info.id;
    const wanted = format || info.format || "f16";
    const url = apiUrl(info.embedding_url.includes("format=") ? info.embedding_url
      : `${info.embedding_url}${info.embedding_url.includes("?") ? "&" : "?"}format=${wanted}`, this.server);
    this.onStage("transfer");
    onStatus("Downloading the embedding…", 0);
    const embedding = await fetchEmbedding(url, (loaded, all) => {
      if (isCurrent()) onStatus(`Downloading the embedding… ${formatBytes(loaded)}${all ? ` of ${formatBytes(all)}` : ""}`, all ? loaded / all : null);
    }, ({ attempt, attempts }) => {
      if (isCurrent()) onStatus(`The connection dropped while the embedding downloaded; trying again (attempt ${attempt} of ${attempts})…`, null);
    });
    if (!isCurrent()) return null;
    this.onStage(null);
    if (!this.decoderInfo) onStatus("The embedding is here; waiting for the decoder to finish loading…", null);
    await this.decoderReady;
    if (!isCurrent()) return null;
    await this.decoder.setEmbedding(embedding.buffer, image.uploadSize);
    if (!isCurrent()) return null;
    this.editor.ready = true;
    return { info, embedding, uploadMs, dtype: info.dtype || wanted };
  }
}
