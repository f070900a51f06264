// <sam-segmenter>: the app as a web component for other tools' pages: a headless API, DOM events, the editor.
//
// Loaded by absolute URL from the app (`<script type="module" src="https://sam.example.org/embed/sam-segmenter.js">`);
// it talks to the app at its `server` attribute (default: where this module came from) through the app's own
// client (js/client.js: decoder start-up, upload, embedding, the editing state machine; the decoder worker is
// started through a same-origin blob: when cross-origin). docs/embedding.md describes the API;
// web/embed/index.html is the iframe version.

import { apiUrl, cancelEverything, startEverything } from "../js/api.js";
import { renderCandidates } from "../js/candidates.js";
import { SamClient } from "../js/client.js";
import { colorFor } from "../js/colors.js";
import { UnknownDecoderError } from "../js/decoder/decoder-startup.js";
import { followEvents } from "../js/everything.js";
import { cocoAnnotation } from "../js/exports.js";
import { KeyboardCursor } from "../js/keyboard.js";
import { lowResPlane, maskStats, resizeMaskNearest } from "../js/mask-math.js";
import { decodeSegmentation, encodeMask } from "../js/rle.js";
import { StageView } from "../js/stage-view.js";
import { TextFind } from "../js/text-find.js";

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
      <button type="button" data-action="undo" title="Undo (Ctrl+Z)" disabled>Undo</button>
      <button type="button" data-action="redo" title="Redo (Ctrl+Y)" class="full" disabled>Redo</button>
      <button type="button" data-action="reset" title="Start this object again (Esc)" class="full" disabled>Reset</button>
      <label class="full"><input type="checkbox" data-action="negative"> Remove area</label>
      <button type="button" data-action="keep" title="Keep this mask as an object (Enter)" disabled>Keep</button>
    </div>
    <div class="candidates" hidden><span class="full">Candidates:</span> <span class="candidate-list" role="radiogroup" aria-label="Candidate masks"></span></div>
    <div class="stage" part="stage" tabindex="0" hidden aria-label="The image: hover to preview, click to add a point, right-click to remove an area, drag for a box">
      <canvas class="photo" aria-hidden="true"></canvas>
      <canvas class="masks" aria-hidden="true"></canvas>
      <svg aria-hidden="true"></svg>
    </div>
    <p class="status" part="status" role="status"></p>
  </div>`;

export class SamSegmenter extends HTMLElement {
  static observedAttributes = ["src"];

  #client = null; // SamClient, made on first use (its server is read then)
  #started = null; // Promise of the decoder start-up
  #image = null; // the client's image once its embedding is in the worker
  #objects = []; // {id, name, mask (original size), overlay (upload size), score}
  #nextObjectId = 1;
  #view;
  #cursor;
  #dragBox = null;
  #lastKept = null; // Promise of the object the last keep made
  #announced = null; // the editor state last reported (by sam-mask or as segment()'s answer)

  constructor() {
    super();
    this.attachShadow({ mode: "open" }).innerHTML = TEMPLATE;
    const $ = (selector) => this.shadowRoot.querySelector(selector);
    this.#view = new StageView(
      { stage: $(".stage"), image: $(".stage .photo"), canvas: $(".stage .masks"), svg: $(".stage svg") },
      {
        onHover: (x, y, time) => this.#editor?.hoverAt(x, y, this.#view.negativeMode, time),
        onLeave: () => this.#editor?.leave(),
        onPoint: (x, y, negative, time) => this.#editor?.point(x, y, negative, time),
        onBox: (box) => this.#editor?.box(box),
        onDragBox: (box) => {
          this.#dragBox = box;
          this.#renderPrompts();
        },
      },
    );
    this.#cursor = new KeyboardCursor({
      size: () => (this.#editor?.ready ? this.#image.uploadSize : null),
      onMove: (x, y, time) => this.#editor.hoverAt(x, y, this.#view.negativeMode, time),
      onPoint: (x, y, negative, time) => this.#editor.point(x, y, negative, time),
      negativeMode: () => this.#view.negativeMode,
      show: (point) => this.#view.setKeyboardCursor(point),
    });
    this.#bindControls();
  }

  connectedCallback() {
    this.#start().catch(() => {}); // reported by the open() that awaits it
  }

  attributeChangedCallback(name, before, after) {
    if (name === "src" && after && after !== before) this.open(after).catch(() => {}); // reported as sam-error
  }

  /** The app's URL (ends with a slash): the `server` attribute, else where this module was loaded from. */
  get server() {
    const value = this.getAttribute("server");
    if (!value) return MODULE_SERVER;
    const url = new URL(value, document.baseURI);
    return url.href.endsWith("/") ? url.href : `${url.href}/`;
  }

  /** The decoder worker's description once it runs: {provider, threads, crossOriginIsolated, singleThreadReason, interface, wasmMemory, …}. */
  get decoderInfo() {
    return this.#decoderInfo;
  }

  #decoderInfo = null;

  /** The opened image's {width, height}, or null. */
  get imageSize() {
    return this.#editor?.ready ? { width: this.#image.originalSize[1], height: this.#image.originalSize[0] } : null;
  }

  get #editor() {
    return this.#client?.editor ?? null;
  }

  // ------------------------------------------------------------------ the headless API

  /**
   * Opens an image: a URL, Blob/File, ImageBitmap, HTMLImageElement or canvas. Resolves {width, height} once
   * prompts can be decoded; rejects with a SegmenterError (and fires `sam-error`) that says what went wrong.
   */
  async open(source) {
    try {
      this.#status("Opening the image…");
      const [blob, name] = await this.#blobOf(source);
      await this.#start();
      const client = this.#client;
      let image;
      try {
        image = await client.prepare(blob, name);
      } catch (error) {
        throw new SegmenterError("not_an_image", error.message);
      }
      if (!image) throw superseded();
      this.#image = null;
      this.#objects = [];
      this.#cursor.clear();
      let loaded;
      try {
        loaded = await client.load(image);
      } catch (error) {
        if (error.status === 413) throw new SegmenterError("too_large", `The server refused the image: ${error.message}`);
        throw new SegmenterError(error.status ? error.code || "upload_failed" : "server_unreachable", error.message);
      }
      if (!loaded) throw superseded();
      this.#image = image;
      this.#showImage();
      const size = { width: image.originalSize[1], height: image.originalSize[0] };
      this.#status("Ready: hover over the image, click to add a point.");
      this.#emit("sam-ready", size);
      return size;
    } catch (error) {
      throw this.#fail(error);
    }
  }

  /**
   * Decodes a prompt in the opened image's pixels: points [{x, y, label}] (label 1 foreground, 0 background),
   * box [x0, y0, x1, y1] or null, multimask (three candidates). Resolves {masks: [{rle, score, area, bbox}]},
   * best predicted IoU first. The prompt becomes the object being edited (the user can refine it; keep()
   * keeps it).
   */
  async segment({ points = [], box = null, multimask = false, text = null, parameters = {} } = {}) {
    try {
      const editor = this.#editor;
      if (!editor?.ready || !this.#image) throw new SegmenterError("not_open", "Nothing to segment yet: call open() and wait until it resolves.");
      const image = this.#image;
      if (text != null) return await this.#segmentText(text, parameters, image);
      const prompt = this.#toUploadFrame(points, box);
      let failure = null;
      const result = await editor.enqueue(async () => {
        try {
          const decoded = await this.#client.decoder.decode({ ...prompt, maskInput: null, multimask: Boolean(multimask), outSize: image.uploadSize });
          if (this.#image !== image) return null;
          editor.history.push({ points: prompt.points, box: prompt.box, result: decoded, chosen: decoded.best });
          this.#announced = editor.state; // the caller gets it as the answer, not as a sam-mask event
          return decoded;
        } catch (error) {
          failure = error;
          return null;
        }
      });
      if (failure) throw failure;
      if (!result || this.#image !== image) throw superseded();
      this.#refresh();
      return { masks: await this.#publicMasks(result, result.best) };
    } catch (error) {
      throw this.#fail(error);
    }
  }

  /**
   * A text prompt: the server finds the instances of `text` ("dog, cat"), the decoder makes one mask per
   * instance from its box. Resolves {masks: [{rle, score (the detector's), iou (the decoder's), area, bbox, label,
   * box}]}, best score first; the object being edited is left as it was.
   */
  async #segmentText(text, parameters, image) {
    if (typeof text !== "string" || !text.trim()) throw new SegmenterError("bad_prompt", "text must name what to find, e.g. \"dog, cat\".");
    const find = new TextFind(this.#client);
    let failure = null;
    const count = await this.#editor.enqueue(() => find.run(text, parameters).catch((error) => { failure = error; return null; }));
    if (failure) throw new SegmenterError(failure.status ? failure.code || "text_failed" : "server_unreachable", failure.message);
    if (count == null || this.#image !== image) throw superseded();
    const [H, W] = image.originalSize;
    const [h, w] = image.uploadSize;
    const masks = [];
    for (const item of find.items) {
      const mask = await this.#fullSize(item.mask, item.lowRes);
      const { area, bbox } = maskStats(mask, image.originalSize);
      const box = [item.box[0] * W / w, item.box[1] * H / h, item.box[2] * W / w, item.box[3] * H / h];
      masks.push({ rle: encodeMask(mask, [H, W]), score: item.score, iou: item.iou, area, bbox: bbox || [0, 0, 0, 0], label: item.label, box });
    }
    return { masks };
  }

  /**
   * Segments everything in the opened image: the server's automatic mask generator on a grid of points, from the
   * embedding it already has. Options (each optional, the server's defaults otherwise): pointsPerSide (1-64,
   * default 32), predIouThresh, stabilityScoreThresh, stabilityScoreOffset, boxNmsThresh, minMaskRegionArea, and
   * signal (an AbortSignal: aborting cancels the job, and the promise rejects with code "cancelled").
   * While the server decodes the grid, `sam-everything-progress` fires once per batch of points with
   * {progress (0..1), added: [mask], removed: [id], masks: [mask] (everything found so far)}: masks can be shown
   * as they come; a later batch may remove (retract) one that a better duplicate replaces. Resolves
   * {masks: [mask]}, the final set (best predicted IoU first), which equals the last progress event's masks.
   * A mask: {id, rle: COCO RLE {size, counts} in the opened image's pixels, score (predicted IoU), stability,
   * area, bbox [x, y, w, h], point [x, y] (its prompt)}.
   */
  async everything({ signal = null, ...options } = {}) {
    try {
      if (!this.#editor?.ready || !this.#image) throw new SegmenterError("not_open", "Nothing to segment yet: call open() and wait until it resolves.");
      const image = this.#image;
      const parameters = everythingParameters(options);
      const server = this.server;
      if (signal?.aborted) throw new SegmenterError("cancelled", "The everything job was cancelled before it started.");
      this.#status("Segmenting everything…");
      const job = await startEverything(image.id, parameters, null, { server });
      const shown = new Map(); // id -> mask
      const stop = new AbortController();
      const cancel = () => {
        stop.abort();
        cancelEverything(job.job_id, { server }).catch(() => {});
      };
      signal?.addEventListener("abort", cancel);
      let progress = 0;
      let last;
      try {
        last = await followEvents(apiUrl(job.events_url, server), {
          signal: stop.signal,
          onProgress: (state) => {
            progress = state.progress ?? progress;
          },
          onMasks: ({ masks, retracted }) => {
            if (this.#image !== image) return;
            const added = masks.map(({ id, ...annotation }) => this.#everythingMask(annotation, id));
            for (const id of retracted) shown.delete(id);
            for (const mask of added) shown.set(mask.id, mask);
            this.#status(`Segmenting everything: ${shown.size} mask${shown.size === 1 ? "" : "s"} so far…`);
            this.#emit("sam-everything-progress", { progress, added, removed: retracted, masks: [...shown.values()] });
          },
        });
      } finally {
        signal?.removeEventListener("abort", cancel);
      }
      if (this.#image !== image) throw superseded();
      if (!last || last.status === "cancelled") throw new SegmenterError("cancelled", "The everything job was cancelled.");
      if (last.status === "error") throw new SegmenterError("everything_failed", last.message || "The server could not segment everything.");
      const masks = last.result.annotations.map((annotation) => this.#everythingMask(annotation, null));
      this.#status(`${masks.length} mask${masks.length === 1 ? "" : "s"} found.`);
      return { masks };
    } catch (error) {
      if (error.status) throw this.#fail(new SegmenterError(error.code || "everything_failed", error.message));
      throw this.#fail(error);
    }
  }

  /** A server annotation (uploaded image's pixels) as everything() gives it (the opened image's pixels). */
  #everythingMask(annotation, id) {
    const { originalSize, uploadSize } = this.#image;
    const mask = {
      id, rle: annotation.segmentation, score: annotation.predicted_iou, stability: annotation.stability_score,
      area: annotation.area, bbox: annotation.bbox, point: annotation.point_coords[0],
    };
    if (originalSize[0] === uploadSize[0] && originalSize[1] === uploadSize[1]) return mask;
    const full = resizeMaskNearest(decodeSegmentation(annotation.segmentation), uploadSize, originalSize);
    const { area, bbox } = maskStats(full, originalSize);
    const [x, y] = mask.point;
    const point = [(x * originalSize[1]) / uploadSize[1], (y * originalSize[0]) / uploadSize[0]];
    return { ...mask, rle: encodeMask(full, originalSize), area, bbox: bbox || [0, 0, 0, 0], point };
  }

  /** Keeps the current mask (the object being edited) as an object; resolves its COCO annotation. */
  async keep() {
    try {
      const editor = this.#editor;
      if (!editor?.ready || !this.#image) throw new SegmenterError("not_open", "Nothing to keep: no image is open.");
      this.#lastKept = null;
      await editor.keep();
      if (!this.#lastKept) throw new SegmenterError("no_mask", "Nothing to keep yet: segment() or click the image first.");
      const object = await this.#lastKept;
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

  /** Forgets the object being edited and every kept object (the image stays open). */
  clear() {
    const had = this.#objects.length > 0;
    this.#objects = [];
    const editor = this.#editor;
    if (editor) {
      editor.leave();
      editor.history.clear();
    }
    this.#refresh();
    if (had) this.#emitObjects();
  }

  // ------------------------------------------------------------------ the client and the editor

  #start() {
    if (!this.#started) {
      const server = this.server;
      this.#client = new SamClient({
        server,
        onStatus: (text) => this.#status(text),
        editor: {
          onChange: () => {
            this.#refresh();
            this.#announce();
          },
          onPreview: () => this.#renderOverlay(),
          onKeep: (editing) => { this.#lastKept = this.#addObject(editing); },
          onPrompts: (points, boxPrompt) => this.#view.drawPrompts(points, boxPrompt, this.#dragBox),
          onPending: (count) => this.shadowRoot.querySelector(".stage").classList.toggle("busy", count > 0),
          onError: (error) => this.#fail(error),
        },
      });
      const wanted = this.getAttribute("decoder");
      this.#started = this.#client.start({ decoder: wanted }).then(
        (started) => {
          this.#decoderInfo = started.info;
          return started;
        },
        (error) => {
          if (error instanceof UnknownDecoderError) throw new SegmenterError("unknown_decoder", error.message);
          throw new SegmenterError("server_unreachable", `The segmentation server at ${server} cannot be used: ${error.message}`);
        },
      );
      this.#started.catch(() => {
        this.#client.decoder.terminate();
        this.#client = null;
        this.#started = null; // a later open() tries again
      });
    }
    return this.#started;
  }

  async #addObject({ mask, lowRes, score }) {
    const image = this.#image;
    const id = this.#nextObjectId++;
    const full = await this.#fullSize(mask, lowRes);
    const object = { id, name: `Object ${id}`, mask: full, overlay: mask, score };
    if (this.#image !== image) return object;
    this.#objects.push(object);
    this.#refresh();
    this.#emitObjects();
    return object;
  }

  /** A mask of the uploaded image at the opened image's own size (from its logits when it has them). */
  async #fullSize(mask, lowRes) {
    const { originalSize, uploadSize } = this.#image;
    if (originalSize[0] === uploadSize[0] && originalSize[1] === uploadSize[1]) return mask;
    if (lowRes) return this.#client.decoder.upsample(lowRes, originalSize);
    return resizeMaskNearest(mask, uploadSize, originalSize);
  }

  /** A result's masks as the API gives them: COCO RLE in the opened image's pixels, `first` then by score. */
  async #publicMasks(result, first) {
    const size = this.#image.originalSize;
    const order = [...result.candidates].sort((a, b) => (a === first ? -1 : b === first ? 1 : result.scores[b] - result.scores[a]));
    const masks = [];
    for (const candidate of order) {
      const overlay = result.masks[candidate] ?? (await this.#client.decoder.upsample(lowResPlane(result.lowRes, candidate), this.#image.uploadSize));
      const mask = await this.#fullSize(overlay, lowResPlane(result.lowRes, candidate));
      const { area, bbox } = maskStats(mask, size);
      masks.push({ rle: encodeMask(mask, size), score: result.scores[candidate], area, bbox: bbox || [0, 0, 0, 0] });
    }
    return masks;
  }

  /** Fires sam-mask when the user's own action (click, box, candidate, undo/redo) changed the current mask. */
  #announce() {
    const state = this.#editor?.state;
    if (!state || state === this.#announced) return;
    this.#announced = state;
    if (state.result) this.#emitUserMask(state.result, state.chosen);
  }

  async #emitUserMask(result, chosen) {
    const image = this.#image;
    if (!image) return;
    const masks = await this.#publicMasks(result, chosen);
    if (this.#image === image) this.#emit("sam-mask", { masks });
  }

  // ------------------------------------------------------------------ input checks

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

  // ------------------------------------------------------------------ drawing and controls

  #showImage() {
    this.shadowRoot.querySelector(".stage").hidden = false;
    this.#view.setImage(this.#image.original, this.#image.uploadSize);
    this.#refresh();
  }

  /** Redraws everything: kept objects, the object being edited, the controls. */
  #refresh() {
    if (!this.#image) return;
    this.#view.setLayers(this.#objects.map((object, i) => ({ mask: object.overlay, color: colorFor(i) })));
    this.#renderOverlay();
    this.#renderControls();
  }

  #renderOverlay() {
    const editor = this.#editor;
    if (!this.#image || !editor) return;
    const color = colorFor(this.#objects.length);
    const mask = editor.mask;
    const hover = editor.hoverMask;
    this.#view.render({ current: mask ? { mask, color } : null, hover: hover ? { mask: hover, color } : null });
    this.#renderPrompts();
  }

  #renderPrompts() {
    const state = this.#editor?.state;
    if (state) this.#view.drawPrompts(state.points, state.box, this.#dragBox);
  }

  #renderControls() {
    const editor = this.#editor;
    const $ = (selector) => this.shadowRoot.querySelector(selector);
    const history = editor?.history;
    $("[data-action=undo]").disabled = !history?.canUndo;
    $("[data-action=redo]").disabled = !history?.canRedo;
    $("[data-action=reset]").disabled = !history || history.isEmpty;
    $("[data-action=keep]").disabled = !editor?.mask;
    if (editor) renderCandidates($(".candidates"), $(".candidate-list"), editor.state, (c) => editor.pickCandidate(c));
  }

  #bindControls() {
    const $ = (selector) => this.shadowRoot.querySelector(selector);
    $("[data-action=undo]").addEventListener("click", () => this.#editor?.undo());
    $("[data-action=redo]").addEventListener("click", () => this.#editor?.redo());
    $("[data-action=reset]").addEventListener("click", () => this.#editor?.reset());
    $("[data-action=keep]").addEventListener("click", () => this.keep().catch(() => {}));
    $("[data-action=negative]").addEventListener("change", (event) => { this.#view.negativeMode = event.target.checked; });
    const stage = $(".stage");
    stage.addEventListener("blur", () => this.#cursor.clear());
    // Shortcuts while the element has the focus (the host page's own keys are left alone).
    this.shadowRoot.addEventListener("keydown", (event) => {
      const editor = this.#editor;
      if (!editor?.ready) return;
      if (event.target === stage && this.#cursor.handle(event)) {
        event.preventDefault();
        return;
      }
      const ctrl = event.ctrlKey || event.metaKey;
      const key = event.key.toLowerCase();
      let handled = true;
      if (ctrl && key === "z") (event.shiftKey ? editor.redo() : editor.undo());
      else if (ctrl && key === "y") editor.redo();
      else if (ctrl || event.altKey) handled = false;
      else if (key === "escape") editor.reset();
      else if (key === "enter" && event.target === stage) this.keep().catch(() => {});
      else if (["1", "2", "3"].includes(key)) editor.pickCandidate(Number(key));
      else if (key === "n") {
        this.#view.negativeMode = !this.#view.negativeMode;
        $("[data-action=negative]").checked = this.#view.negativeMode;
      } else handled = false;
      if (handled) event.preventDefault();
    });
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

const EVERYTHING_OPTIONS = {
  pointsPerSide: "points_per_side",
  predIouThresh: "pred_iou_thresh",
  stabilityScoreThresh: "stability_score_thresh",
  stabilityScoreOffset: "stability_score_offset",
  boxNmsThresh: "box_nms_thresh",
  minMaskRegionArea: "min_mask_region_area",
};

/** everything()'s options -> the server's parameters (it checks their ranges and answers 400 with the reason). */
function everythingParameters(options) {
  const parameters = {};
  for (const [name, value] of Object.entries(options)) {
    if (!(name in EVERYTHING_OPTIONS)) {
      throw new SegmenterError("bad_options", `Unknown everything() option ${name}; use ${Object.keys(EVERYTHING_OPTIONS).join(", ")} or signal.`);
    }
    if (!Number.isFinite(value)) throw new SegmenterError("bad_options", `everything() option ${name} must be a number.`);
    parameters[EVERYTHING_OPTIONS[name]] = value;
  }
  return parameters;
}

const superseded = () => new SegmenterError("superseded", "Another image was opened before this one was ready.");

if (!customElements.get("sam-segmenter")) customElements.define("sam-segmenter", SamSegmenter);
