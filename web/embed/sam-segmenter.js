// <sam-segmenter>: the app as a web component for other tools' pages: a headless API, DOM events, the editor.
//
// Loaded by absolute URL from the app (`<script type="module" src="https://sam.example.org/embed/sam-segmenter.js">`);
// it talks to the app at its `server` attribute (default: the origin this module came from) and reuses the app's
// own modules: the HTTP API, the decoder worker (started through a same-origin blob: when cross-origin), the
// mask maths, COCO RLE. docs/embedding.md describes the API; web/embed/index.html is the iframe version.

import { apiUrl, fetchEmbedding, fetchModelInfo, uploadImage } from "../js/api.js";
import { colorFor } from "../js/colors.js";
import { DecoderClient } from "../js/decoder-client.js";
import { cocoAnnotation } from "../js/exports.js";
import { prepareImage } from "../js/image-input.js";
import { maskStats } from "../js/mask-math.js";
import { encodeMask } from "../js/rle.js";
import { StageView } from "../js/stage-view.js";

const MODULE_SERVER = new URL("../", import.meta.url).href;
const STYLESHEET = new URL("./sam-segmenter.css", import.meta.url).href;

/** A rejected promise's reason and the `sam-error` event's detail: `code` says which failure, `message` in words. */
export class SegmenterError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "SegmenterError";
    this.code = code;
  }
}

const TEMPLATE = `
  <link rel="stylesheet" href="${STYLESHEET}">
  <div class="frame" part="frame">
    <div class="toolbar" part="toolbar">
      <button type="button" data-action="undo" title="Undo (Ctrl+Z)">Undo</button>
      <button type="button" data-action="redo" title="Redo (Ctrl+Y)" class="full">Redo</button>
      <button type="button" data-action="reset" title="Start this object again (Esc)" class="full">Reset</button>
      <label class="full"><input type="checkbox" data-action="negative"> Remove area</label>
      <span class="candidates" role="radiogroup" aria-label="Candidate masks"></span>
      <button type="button" data-action="keep" title="Keep this mask as an object (Enter)">Keep</button>
    </div>
    <div class="stage" part="stage" tabindex="0" hidden>
      <img alt="The image being segmented">
      <canvas aria-hidden="true"></canvas>
      <svg aria-hidden="true"></svg>
    </div>
    <p class="status" part="status" role="status"></p>
  </div>`;

export class SamSegmenter extends HTMLElement {
  static observedAttributes = ["src", "compact"];

  #engine = null; // Promise of {decoder: DecoderClient, info: worker's ready answer, model: /api/model}
  #image = null; // {name, originalSize, uploadSize, id, url}
  #ready = false;
  #token = 0;
  #current = null; // {result, chosen, scale}: the mask keep() keeps
  #objects = []; // {id, mask (original size), score}
  #nextObjectId = 1;
  #view = null;

  constructor() {
    super();
    this.attachShadow({ mode: "open" }).innerHTML = TEMPLATE;
    const $ = (selector) => this.shadowRoot.querySelector(selector);
    this.#view = new StageView(
      { stage: $(".stage"), image: $(".stage img"), canvas: $(".stage canvas"), svg: $(".stage svg") },
      { onHover: () => {}, onLeave: () => {}, onPoint: () => {}, onBox: () => {}, onDragBox: () => {} },
    );
  }

  connectedCallback() {
    this.#startEngine().catch(() => {}); // reported by the open() that awaits it
  }

  attributeChangedCallback(name, before, after) {
    if (name === "src" && after && after !== before) {
      this.open(after).catch(() => {}); // reported as sam-error
    }
  }

  /** The app's URL (ends with a slash): the `server` attribute, else where this module was loaded from. */
  get server() {
    const value = this.getAttribute("server");
    if (!value) return MODULE_SERVER;
    const url = new URL(value, document.baseURI);
    return url.href.endsWith("/") ? url.href : `${url.href}/`;
  }

  /** The decoder worker's description once it runs: {provider, threads, crossOriginIsolated, interface, …}. */
  get decoderInfo() {
    return this.#decoderInfo;
  }

  #decoderInfo = null;

  /** The opened image's {width, height}, or null. */
  get imageSize() {
    return this.#ready ? { width: this.#image.originalSize[1], height: this.#image.originalSize[0] } : null;
  }

  // ------------------------------------------------------------------ the headless API

  /**
   * Opens an image: a URL, Blob/File, ImageBitmap, HTMLImageElement or canvas. Resolves {width, height} once
   * prompts can be decoded; rejects with a SegmenterError (and fires `sam-error`) that says what went wrong.
   */
  async open(source) {
    const token = ++this.#token;
    this.#ready = false;
    this.#current = null;
    try {
      this.#status("Opening the image…");
      const [blob, name] = await this.#blobOf(source);
      let prepared;
      try {
        prepared = await prepareImage(blob, name);
      } catch (error) {
        throw new SegmenterError("not_an_image", error.message);
      }
      this.#check(token);
      const engine = await this.#startEngine();
      this.#check(token);
      this.#status("Uploading the image…");
      let info;
      try {
        info = await uploadImage(prepared.upload, name, () => {}, () => this.#status("The server is encoding the image…"), { server: this.server });
      } catch (error) {
        if (error.status === 413) throw new SegmenterError("too_large", `The server refused the image: ${error.message}`);
        throw new SegmenterError(error.status ? error.code || "upload_failed" : "server_unreachable", error.message);
      }
      this.#check(token);
      this.#status("Downloading the embedding…");
      const embedding = await fetchEmbedding(new URL(info.embedding_url, this.server).href);
      this.#check(token);
      await engine.decoder.setEmbedding(embedding.buffer, prepared.uploadSize);
      this.#check(token);
      if (this.#image?.url) URL.revokeObjectURL(this.#image.url);
      this.#image = { name, originalSize: prepared.originalSize, uploadSize: prepared.uploadSize, id: info.id, url: URL.createObjectURL(blob) };
      this.#objects = [];
      this.#showImage();
      this.#ready = true;
      const size = { width: prepared.originalSize[1], height: prepared.originalSize[0] };
      this.#status("Ready.");
      this.#emit("sam-ready", size);
      return size;
    } catch (error) {
      if (token !== this.#token) throw new SegmenterError("superseded", "Another image was opened before this one was ready.");
      throw this.#fail(error);
    }
  }

  /**
   * Decodes a prompt in the opened image's pixels: points [{x, y, label}] (label 1 foreground, 0 background),
   * box [x0, y0, x1, y1] or null, multimask (three candidates). Resolves {masks: [{rle, score, area, bbox}]},
   * best predicted IoU first; the best becomes the current mask (what keep() keeps).
   */
  async segment({ points = [], box = null, multimask = false } = {}) {
    try {
      if (!this.#ready) throw new SegmenterError("not_open", "Nothing to segment yet: call open() and wait until it resolves.");
      const prompt = this.#toUploadFrame(points, box);
      const token = this.#token;
      const { decoder } = await this.#engine;
      const result = await decoder.decode({ ...prompt, maskInput: null, multimask: Boolean(multimask), outSize: this.#image.uploadSize });
      this.#check(token);
      this.#current = { result, chosen: result.best };
      this.#render(prompt);
      return { masks: await this.#publicMasks(result) };
    } catch (error) {
      throw this.#fail(error);
    }
  }

  /** Keeps the current mask as an object; resolves its COCO annotation. */
  async keep() {
    try {
      if (!this.#ready) throw new SegmenterError("not_open", "Nothing to keep: no image is open.");
      if (!this.#current) throw new SegmenterError("no_mask", "Nothing to keep yet: segment() or click the image first.");
      const { result, chosen } = this.#current;
      const mask = await this.#fullSize(result, chosen);
      const object = { id: this.#nextObjectId++, mask, score: result.scores[chosen], name: null };
      object.name = `Object ${object.id}`;
      this.#objects.push(object);
      this.#current = null;
      this.#render();
      this.#emitObjects();
      return cocoAnnotation(object, this.#image.originalSize, object.id);
    } catch (error) {
      throw this.#fail(error);
    }
  }

  /** The kept objects as COCO annotations ({id, segmentation: compressed RLE, area, bbox, predicted_iou, …}). */
  getObjects() {
    if (!this.#image) return [];
    return this.#objects.map((object) => cocoAnnotation(object, this.#image.originalSize, object.id));
  }

  /** Forgets the current mask and every kept object (the image stays open). */
  clear() {
    const had = this.#objects.length > 0;
    this.#objects = [];
    this.#current = null;
    this.#render();
    if (had) this.#emitObjects();
  }

  // ------------------------------------------------------------------ internals

  #startEngine() {
    if (!this.#engine) {
      this.#engine = (async () => {
        const server = this.server;
        const model = await fetchModelInfo({ server }).catch((error) => {
          throw new SegmenterError("server_unreachable", `The segmentation server at ${server} cannot be used: ${error.message}`);
        });
        const wanted = this.getAttribute("decoder") || model.default_decoder;
        const entry = model.decoders.find((d) => d.name === wanted);
        if (!entry) {
          const names = model.decoders.map((d) => d.name).join(", ") || "none";
          throw new SegmenterError("unknown_decoder", `The server has no decoder named "${wanted}" (it offers: ${names}).`);
        }
        const decoder = new DecoderClient();
        const info = await decoder.init(apiUrl(entry.url, server), "auto");
        this.#decoderInfo = info;
        return { decoder, info, model };
      })();
      this.#engine.catch(() => { this.#engine = null; }); // a later open() tries again
    }
    return this.#engine;
  }

  /** [Blob, name] of any accepted image source. */
  async #blobOf(source) {
    if (typeof source === "string" || source instanceof URL) {
      const url = new URL(source, document.baseURI);
      let response;
      try {
        response = await fetch(url, { credentials: "same-origin" });
      } catch {
        throw new SegmenterError("unreachable", `The image at ${url.href} cannot be downloaded (unreachable, or its server does not allow this page to read it).`);
      }
      if (!response.ok) throw new SegmenterError("unreachable", `The image at ${url.href} cannot be downloaded (HTTP ${response.status}).`);
      const blob = await response.blob();
      return [blob, decodeURIComponent(url.pathname.split("/").pop() || "image")];
    }
    if (source instanceof Blob) return [source, source.name || "image"];
    const drawable = (typeof ImageBitmap !== "undefined" && source instanceof ImageBitmap) ||
      source instanceof HTMLImageElement || source instanceof HTMLCanvasElement ||
      (typeof OffscreenCanvas !== "undefined" && source instanceof OffscreenCanvas);
    if (!drawable) {
      throw new SegmenterError("not_an_image", "open() takes an image URL, a Blob or File, an ImageBitmap, an <img> or a canvas.");
    }
    if (source instanceof HTMLImageElement) {
      try {
        await source.decode();
      } catch {
        throw new SegmenterError("not_an_image", "The <img> given to open() has no image loaded.");
      }
    }
    const width = source.naturalWidth || source.width;
    const height = source.naturalHeight || source.height;
    if (!width || !height) throw new SegmenterError("not_an_image", "The image given to open() is empty (0 pixels).");
    const canvas = new OffscreenCanvas(width, height);
    canvas.getContext("2d").drawImage(source, 0, 0);
    try {
      return [await canvas.convertToBlob({ type: "image/png" }), "image.png"];
    } catch {
      throw new SegmenterError("not_an_image", "The browser does not let this page read that image's pixels (a cross-origin image without CORS).");
    }
  }

  /** Checks a prompt in the opened image's pixels and maps it into the uploaded image's pixels. */
  #toUploadFrame(points, box) {
    const [H, W] = this.#image.originalSize;
    const [h, w] = this.#image.uploadSize;
    if (!Array.isArray(points)) throw new SegmenterError("bad_prompt", "points must be an array of {x, y, label}.");
    const mapped = points.map((p, i) => {
      if (!p || !Number.isFinite(p.x) || !Number.isFinite(p.y)) throw new SegmenterError("bad_prompt", `Point ${i} needs numbers x and y.`);
      if (p.label !== 0 && p.label !== 1) throw new SegmenterError("bad_prompt", `Point ${i} has label ${p.label}; use 1 (foreground) or 0 (background).`);
      if (p.x < 0 || p.y < 0 || p.x >= W || p.y >= H) {
        throw new SegmenterError("outside_image", `Point ${i} (${p.x}, ${p.y}) is outside the ${W}×${H} image.`);
      }
      return { x: (p.x * w) / W, y: (p.y * h) / H, label: p.label };
    });
    let mappedBox = null;
    if (box != null) {
      if (!Array.isArray(box) || box.length !== 4 || !box.every(Number.isFinite)) {
        throw new SegmenterError("bad_prompt", "box must be [x0, y0, x1, y1] (numbers) or null.");
      }
      const [x0, y0, x1, y1] = box;
      if (x0 < 0 || y0 < 0 || x1 > W || y1 > H) {
        throw new SegmenterError("outside_image", `The box [${box.join(", ")}] reaches outside the ${W}×${H} image.`);
      }
      if (x1 <= x0 || y1 <= y0) throw new SegmenterError("bad_prompt", "The box needs x0 < x1 and y0 < y1.");
      mappedBox = [(x0 * w) / W, (y0 * h) / H, (x1 * w) / W, (y1 * h) / H];
    }
    if (!mapped.length && !mappedBox) throw new SegmenterError("bad_prompt", "Give at least one point or a box.");
    return { points: mapped, box: mappedBox };
  }

  /** The candidate's mask at the opened image's own size. */
  async #fullSize(result, candidate) {
    const [H, W] = this.#image.originalSize;
    const [h, w] = this.#image.uploadSize;
    if (H === h && W === w) return result.masks[candidate];
    const plane = 256 * 256;
    const { decoder } = await this.#engine;
    return decoder.upsample(result.lowRes.subarray(candidate * plane, (candidate + 1) * plane), this.#image.originalSize);
  }

  /** The result's masks as the API gives them: COCO RLE in the opened image's pixels, best score first. */
  async #publicMasks(result) {
    const size = this.#image.originalSize;
    const order = Object.keys(result.masks).map(Number).sort((a, b) => result.scores[b] - result.scores[a]);
    const masks = [];
    for (const candidate of order) {
      const mask = await this.#fullSize(result, candidate);
      const { area, bbox } = maskStats(mask, size);
      masks.push({ rle: encodeMask(mask, size), score: result.scores[candidate], area, bbox: bbox || [0, 0, 0, 0] });
    }
    return masks;
  }

  #showImage() {
    const stage = this.shadowRoot.querySelector(".stage");
    stage.hidden = false;
    this.#view.setImage(this.#image.url, this.#image.uploadSize);
    this.#render();
  }

  #render(prompt = null) {
    if (!this.#image) return;
    const view = this.#view;
    // Kept objects are painted at the upload size, which is the overlay's (masks were made there or from it).
    view.setLayers(this.#objects.map((object, i) => ({ mask: this.#overlayMask(object.mask), color: colorFor(i) })));
    const current = this.#current;
    view.render({ current: current ? { mask: current.result.masks[current.chosen], color: colorFor(this.#objects.length) } : null });
    view.drawPrompts(prompt?.points || [], prompt?.box || null);
  }

  #overlayMask(mask) {
    const [H, W] = this.#image.originalSize;
    const [h, w] = this.#image.uploadSize;
    if (H === h && W === w) return mask;
    const out = new Uint8Array(h * w);
    for (let y = 0; y < h; y++) {
      const sy = Math.min(H - 1, Math.floor(((y + 0.5) * H) / h)) * W;
      for (let x = 0; x < w; x++) out[y * w + x] = mask[sy + Math.min(W - 1, Math.floor(((x + 0.5) * W) / w))];
    }
    return out;
  }

  #check(token) {
    if (token !== this.#token) throw new SegmenterError("superseded", "Another image was opened before this one was ready.");
  }

  #status(text) {
    this.shadowRoot.querySelector(".status").textContent = text;
  }

  /** Turns any failure into a SegmenterError, shows it and fires `sam-error`. */
  #fail(error) {
    const failure = error instanceof SegmenterError ? error : new SegmenterError(error?.code || "failed", error?.message || String(error));
    if (failure.code !== "superseded") {
      this.#status(failure.message);
      this.#emit("sam-error", { code: failure.code, message: failure.message });
    }
    return failure;
  }

  #emitObjects() {
    this.#emit("sam-objects-changed", { objects: this.getObjects() });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail, bubbles: true, composed: true }));
  }
}

if (!customElements.get("sam-segmenter")) customElements.define("sam-segmenter", SamSegmenter);
