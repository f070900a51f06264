// Wires the page together: image in -> upload -> embedding -> decoder worker; prompts -> masks -> objects
// -> exports. The model runs only in the worker (decoder-client.js); this module never touches it.

import { fetchEmbedding, fetchGallery, fetchModelInfo, uploadImage } from "./api.js";
import { Classroom, formatBytes, formatMs, paintLowResMask } from "./classroom.js";
import { colorFor } from "./colors.js";
import { DecoderClient } from "./decoder-client.js";
import { EverythingMode } from "./everything.js";
import { copyPng, cocoJson, cutoutPng, download, maskPng, polygonsSvg, safeName } from "./exports.js";
import { bindImageInputs, fetchImage, prepareImage } from "./image-input.js";
import { LOW_RES_SIDE, maskStats, resizeMaskNearest } from "./mask-math.js";
import { ObjectList } from "./objects.js";
import { chosenLowRes, chosenMask, PromptHistory } from "./prompts.js";
import { StageView } from "./stage-view.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const BACKEND_KEY = "sam-web.backend";
const PLANE = LOW_RES_SIDE * LOW_RES_SIDE;

const app = {
  model: null, // /api/model
  decoderEntry: null, // the chosen entry of model.decoders
  decoderReady: null, // Promise of the worker's "ready" answer
  image: null, // {name, original, originalSize, uploadSize, id, url}
  ready: false, // embedding is in the worker
  loadToken: 0,
  lastHoverPixel: null,
  hover: null, // the painted hover preview: {mask, result, pixel, state}
  keyboardCursor: null, // [x, y] of the arrow-key cursor
  pending: 0, // queued prompt changes
  dragBox: null,
  chain: Promise.resolve(), // committed prompts run strictly one after another
};

const history = new PromptHistory();
const classroom = new Classroom();
const everything = new EverythingMode((fraction, text) => setEverythingStatus(text, fraction));
const decoder = new DecoderClient(({ stage, loaded, total }) => {
  if (stage === "model") setStatus(`Loading the decoder… ${formatBytes(loaded)}${total ? ` of ${formatBytes(total)}` : ""}`, total ? loaded / total : null);
});

// ---------------------------------------------------------------- status and errors

function setStatus(text, progress = undefined) {
  $("status-text").textContent = text;
  const bar = $("status-progress");
  bar.hidden = progress === undefined;
  if (progress === null) bar.removeAttribute("value"); // indeterminate
  else if (progress !== undefined) bar.value = Math.max(0, Math.min(1, progress));
  if (progress !== undefined) bar.setAttribute("aria-label", text);
}

function showError(error) {
  $("error-text").textContent = error?.message || String(error);
  $("error-banner").hidden = false;
}

function clearError() {
  $("error-banner").hidden = true;
}

// ---------------------------------------------------------------- the decoder and the model

async function startDecoder() {
  try {
    app.model = await fetchModelInfo();
  } catch (error) {
    setStatus("The server did not describe its model.");
    showError(error);
    throw error;
  }
  const { model } = app;
  if (model.weights === "random") {
    $("weights-banner").textContent = model.weights_message ||
      "This server runs a model with random weights: masks will not follow real objects.";
    $("weights-banner").hidden = false;
  }
  classroom.setModel({ modelType: model.model_type, weights: model.weights });
  const wanted = params.get("decoder") || model.default_decoder;
  app.decoderEntry = model.decoders.find((d) => d.name === wanted) || model.decoders[0];
  if (!app.decoderEntry) throw new Error("The server offers no decoder model.");
  const backend = params.get("backend") || localStorage.getItem(BACKEND_KEY) || "auto";
  $("backend-select").value = backend;
  const url = new URL(app.decoderEntry.url, location.href).href;
  setStatus("Loading the decoder…", null);
  const info = await decoder.init(url, backend, Number(params.get("threads")) || 0, model.ort_version);
  const runsOn = info.provider === "webgpu" ? "WebGPU" : `WebAssembly, ${info.threads} thread${info.threads === 1 ? "" : "s"}`;
  $("fact-decoder").textContent = `${app.decoderEntry.name} (${info.interface} interface, ${formatBytes(info.modelBytes)})`;
  $("fact-provider").textContent = runsOn;
  classroom.setProvider(runsOn);
  document.body.dataset.decoder = "ready";
  document.body.dataset.provider = info.provider;
  if (info.fallbackReason) showError(new Error(info.fallbackReason));
  if (!app.image) setStatus("Ready. Choose, drop or paste an image, or pick a sample.");
  return info;
}

// ---------------------------------------------------------------- images

async function openImage(blob, name) {
  const token = ++app.loadToken;
  clearError();
  app.ready = false;
  // A hover decode still in flight belongs to the previous image: drop it, and forget where the pointer was.
  decoder.cancelHover();
  app.hover = null;
  app.lastHoverPixel = null;
  app.keyboardCursor = null;
  view.setKeyboardCursor(null);
  document.body.dataset.image = "loading";
  let prepared;
  try {
    prepared = await prepareImage(blob, name);
  } catch (error) {
    // Not an image: the one on screen stays as it was, everything mode included.
    showError(error);
    document.body.dataset.image = app.image ? "ready" : "none";
    app.ready = Boolean(app.image);
    return;
  }
  if (token !== app.loadToken) return;
  everything.clear();
  setEverythingStatus("", null);
  updateEverythingButtons();
  if (app.image?.url) URL.revokeObjectURL(app.image.url);
  app.image = { ...prepared, url: URL.createObjectURL(blob), id: null };
  history.clear();
  objects.clear();
  app.hover = null;
  $("empty-state").hidden = true;
  $("image-actions").hidden = false;
  $("stage").hidden = false;
  $("drop-zone").classList.add("has-image");
  $("stage").classList.add("busy");
  view.setImage(app.image.url, prepared.uploadSize);
  view.setLayers([]);
  view.render();
  const [H, W] = prepared.originalSize;
  $("fact-image").textContent = `${name}, ${W}×${H}` +
    (prepared.downscaled ? ` (sent at ${prepared.uploadSize[1]}×${prepared.uploadSize[0]})` : "");
  refreshControls();

  try {
    const total = prepared.upload.size;
    setStatus(`Uploading ${formatBytes(total)}…`, 0);
    const started = performance.now();
    const info = await uploadWhenServerFree(prepared.upload, name, token);
    if (token !== app.loadToken) return;
    const uploadMs = performance.now() - started;
    if (info.height !== prepared.uploadSize[0] || info.width !== prepared.uploadSize[1]) {
      // The server decoded another size than the browser (e.g. an EXIF rotation it ignored).
      throw new Error(`The server read the image as ${info.width}×${info.height}, the browser as ` +
        `${prepared.uploadSize[1]}×${prepared.uploadSize[0]}. Try saving the image as PNG first.`);
    }
    app.image.id = info.id;
    const format = params.get("format") || info.format || "f16";
    const embeddingUrl = info.embedding_url.includes("format=") ? info.embedding_url
      : `${info.embedding_url}${info.embedding_url.includes("?") ? "&" : "?"}format=${format}`;
    setStatus("Downloading the embedding…", 0);
    const embedding = await fetchEmbedding(embeddingUrl, (loaded, all) => {
      if (token === app.loadToken) {
        setStatus(`Downloading the embedding… ${formatBytes(loaded)}${all ? ` of ${formatBytes(all)}` : ""}`, all ? loaded / all : null);
      }
    });
    if (token !== app.loadToken) return;
    classroom.setImage({ encodeMs: info.encode_ms, cacheHit: info.cache_hit, bytes: embedding.bytes,
      wireBytes: embedding.wireBytes, format: info.dtype || format, downloadMs: embedding.ms });
    await app.decoderReady;
    await decoder.setEmbedding(embedding.buffer, prepared.uploadSize);
    if (token !== app.loadToken) return;
    app.ready = true;
    document.body.dataset.image = "ready";
    $("stage").classList.remove("busy");
    const pointing = matchMedia("(hover: hover)").matches ? "hover over the image" : "tap the image";
    const encoded = info.cache_hit ? "Already encoded (from the server's cache)" : `Encoded in ${formatMs(info.encode_ms)}`;
    setStatus(`Ready: ${pointing}. ${encoded}, embedding ${formatBytes(embedding.wireBytes)}, upload ${formatMs(uploadMs)}.`);
    refreshControls();
  } catch (error) {
    if (token !== app.loadToken) return;
    document.body.dataset.image = "error";
    $("stage").classList.remove("busy");
    setStatus("The image could not be prepared.");
    showError(error);
  }
}

const BUSY_RETRIES = 3;
const BUSY_WAIT_MAX_S = 15;

/** Uploads with progress; when the server is busy (503 + Retry-After) waits as told and tries again. */
async function uploadWhenServerFree(blob, name, token) {
  for (let attempt = 0; ; attempt++) {
    let encodingTimer = null;
    try {
      return await uploadImage(
        blob,
        name,
        (loaded, all) => token === app.loadToken &&
          setStatus(`Uploading… ${formatBytes(loaded)} of ${formatBytes(all)}`, all ? loaded / all : null),
        () => {
          const sent = performance.now();
          encodingTimer = setInterval(() => {
            if (token === app.loadToken) setStatus(`The server is encoding the image… ${((performance.now() - sent) / 1000).toFixed(1)} s`, null);
          }, 100);
        },
      );
    } catch (error) {
      if (error.retryAfterS == null || attempt >= BUSY_RETRIES || token !== app.loadToken) throw error;
      const waitS = Math.min(Math.max(error.retryAfterS, 1), BUSY_WAIT_MAX_S);
      for (let left = waitS; left > 0 && token === app.loadToken; left--) {
        setStatus(`The server is busy with other images; trying again in ${left} s…`, null);
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
      if (token !== app.loadToken) throw error;
    } finally {
      clearInterval(encodingTimer);
    }
  }
}

async function loadGallery() {
  const list = $("gallery-list");
  let items;
  try {
    items = await fetchGallery();
  } catch {
    list.replaceChildren(Object.assign(document.createElement("li"), { className: "muted", textContent: "No samples available." }));
    return;
  }
  if (!items.length) {
    list.replaceChildren(Object.assign(document.createElement("li"), { className: "muted", textContent: "No samples available." }));
    return;
  }
  list.replaceChildren(...items.map((item) => {
    const row = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("aria-label", `Open the sample ${item.name}`);
    button.title = [item.name, item.source, item.license].filter(Boolean).join(" · ");
    const image = document.createElement("img");
    image.src = item.url;
    image.alt = "";
    image.loading = "lazy";
    const caption = document.createElement("span");
    caption.className = "caption";
    caption.textContent = item.name;
    button.append(image, caption);
    button.addEventListener("click", async () => {
      try {
        openImage(await fetchImage(item.url, item.name), item.name);
      } catch (error) {
        showError(error);
      }
    });
    row.append(button);
    return row;
  }));
}

// ---------------------------------------------------------------- prompts and masks

const nextColor = () => colorFor(objects.items.length ? Math.max(...objects.items.map((o) => o.colorIndex)) + 1 : 0);

function promptFor(state, extraPoint = null) {
  const points = extraPoint ? [...state.points, extraPoint] : state.points;
  const maskInput = chosenLowRes(state);
  return {
    points,
    box: state.box,
    maskInput: maskInput ? Float32Array.from(maskInput) : null,
    // Like Meta's predictor: three candidates only for a lone click, where the intent is ambiguous.
    multimask: points.length === 1 && !state.box && !maskInput,
    outSize: app.image.uploadSize,
  };
}

function renderOverlay() {
  if (!app.image) return;
  const state = history.current;
  const mask = chosenMask(state);
  view.render({
    current: mask ? { mask, color: nextColor() } : null,
    hover: app.hover && !everything.active ? { mask: app.hover.mask, color: nextColor() } : null,
  });
  view.drawPrompts(state.points, state.box, app.dragBox);
}

function renderLayers() {
  const layers = objects.items.map((o) => ({ mask: o.mask, color: o.color, emphasis: o.id === objects.selectedId ? "selected" : undefined }));
  view.setLayers([...everything.layers(), ...layers]);
  renderOverlay();
}

/** Records a User Timing measure from a pointer event to the frame that shows its mask (read by benchmarks). */
function measureToPaint(name, eventTime) {
  if (eventTime == null) return;
  requestAnimationFrame(() => performance.measure(name, { start: eventTime, end: performance.now() }));
}

function onHover(x, y, eventTime) {
  if (!app.ready) return;
  if (app.lastHoverPixel && app.lastHoverPixel[0] === x && app.lastHoverPixel[1] === y) return;
  app.lastHoverPixel = [x, y];
  if (everything.active) {
    const index = everything.at(x, y);
    if (index !== everything.highlight) {
      everything.highlight = index;
      renderLayers();
    }
    return;
  }
  const label = view.negativeMode ? 0 : 1;
  const pixel = { x, y, label };
  const state = history.current;
  const token = app.loadToken;
  decoder.hover(promptFor(state, pixel), (result, error) => {
    if (token !== app.loadToken) return;
    if (error) {
      showError(error);
      return;
    }
    // Kept whole: a click on this very pixel reuses the decode instead of running it again.
    app.hover = { mask: result.masks[result.best], result, pixel, state };
    classroom.addDecode(result, result.best);
    renderOverlay();
    measureToPaint("sam:hover-to-paint", eventTime);
  });
}

function onLeave() {
  app.lastHoverPixel = null;
  decoder.cancelHover();
  if (everything.active && everything.highlight >= 0) {
    everything.highlight = -1;
    renderLayers();
  }
  if (app.hover) {
    app.hover = null;
    renderOverlay();
  }
}

/** Runs `task` after every earlier prompt change; body[data-pending] counts what is still queued. */
function enqueue(task) {
  app.pending++;
  document.body.dataset.pending = String(app.pending);
  app.chain = app.chain.then(task).catch(showError).finally(() => {
    app.pending--;
    document.body.dataset.pending = String(app.pending);
  });
  return app.chain;
}

/** Queues a prompt change; `change(state)` gives the new points/box from the state current at run time. */
function commitPrompt(change, eventTime = null) {
  if (!app.ready) return;
  app.hover = null;
  decoder.cancelHover();
  // Taken now, not when the task runs: a prompt queued before another image opened belongs to the old one.
  const token = app.loadToken;
  return enqueue(async () => {
    if (token !== app.loadToken) return;
    const state = history.current;
    const next = { ...state, ...change(state) };
    view.drawPrompts(next.points, next.box);
    try {
      const result = await decoder.decode(promptFor({ ...state, points: next.points, box: next.box }));
      if (token !== app.loadToken) return;
      history.push({ points: next.points, box: next.box, result, chosen: result.best });
      classroom.addDecode(result, result.best);
      $("status-text").textContent = `Mask in ${formatMs(result.decodeMs)} (decoder) + ${formatMs(result.postMs)} (upsampling).`;
    } catch (error) {
      showError(error);
    }
    app.lastHoverPixel = null;
    refreshControls();
    renderOverlay();
    measureToPaint("sam:click-to-paint", eventTime);
  });
}

function onPoint(x, y, negative, eventTime) {
  if (everything.active) {
    const index = everything.at(x, y);
    if (index >= 0) takeEverythingMask(index);
    return;
  }
  const label = negative ? 0 : 1;
  const hover = app.hover;
  if (hover && !app.pending && hover.state === history.current &&
      hover.pixel.x === x && hover.pixel.y === y && hover.pixel.label === label) {
    // The preview on screen is exactly this click's mask: keep it rather than decode the same prompt again.
    app.hover = null;
    decoder.cancelHover();
    const token = app.loadToken;
    enqueue(() => {
      if (token !== app.loadToken) return;
      const { result } = hover;
      history.push({ points: [...hover.state.points, hover.pixel], box: hover.state.box, result, chosen: result.best });
      app.lastHoverPixel = null;
      refreshControls();
      renderOverlay();
      measureToPaint("sam:click-to-paint", eventTime);
    });
    return;
  }
  commitPrompt((state) => ({ points: [...state.points, { x, y, label: negative ? 0 : 1 }] }), eventTime);
}

function onBox(box) {
  if (everything.active) return;
  if (box[2] - box[0] < 2 || box[3] - box[1] < 2) return;
  commitPrompt(() => ({ box }));
}

function onDragBox(box) {
  app.dragBox = box;
  view.drawPrompts(history.current.points, history.current.box, box);
}

function afterHistoryMove() {
  app.hover = null;
  app.lastHoverPixel = null;
  decoder.cancelHover();
  refreshControls();
  renderOverlay();
  const state = history.current;
  if (state.result) classroom.addDecode(state.result, state.chosen);
}

const undo = () => enqueue(() => { history.undo(); afterHistoryMove(); });
const redo = () => enqueue(() => { history.redo(); afterHistoryMove(); });
const resetPrompts = () => enqueue(() => { history.reset(); afterHistoryMove(); });

async function pickCandidate(candidate) {
  const state = history.current;
  if (!state.result || !state.result.candidates.includes(candidate)) return;
  if (!state.result.masks[candidate]) {
    // A click that reused its hover preview only has the best candidate at full size so far.
    const lowRes = state.result.lowRes.subarray(candidate * PLANE, (candidate + 1) * PLANE);
    state.result.masks[candidate] = await decoder.upsample(lowRes, app.image.uploadSize);
    if (history.current !== state) return;
  }
  history.replace({ ...state, chosen: candidate });
  classroom.addDecode(state.result, candidate);
  refreshControls();
  renderOverlay();
}

function keepObject() {
  return enqueue(() => {
    const state = history.current;
    const mask = chosenMask(state);
    if (!mask) return;
    const colorIndex = objects.items.length ? Math.max(...objects.items.map((o) => o.colorIndex)) + 1 : 0;
    objects.add({
      name: `Object ${objects.nextId}`, color: colorFor(colorIndex), colorIndex, mask,
      lowRes: Float32Array.from(chosenLowRes(state)), score: state.result.scores[state.chosen],
      area: maskStats(mask, app.image.uploadSize).area,
    });
    history.clear();
    afterHistoryMove();
  });
}

function takeEverythingMask(index) {
  const item = everything.take(index);
  const colorIndex = objects.items.length ? Math.max(...objects.items.map((o) => o.colorIndex)) + 1 : 0;
  objects.add({
    name: `Object ${objects.nextId}`, color: colorFor(colorIndex), colorIndex, mask: item.mask, lowRes: null,
    score: item.score ?? null, area: item.area,
  });
  updateEverythingButtons();
}

// ---------------------------------------------------------------- controls

function renderCandidates() {
  const state = history.current;
  const result = state.result;
  const show = Boolean(result && result.candidates.length > 1);
  $("candidates").hidden = !show;
  if (!show) return;
  const list = $("candidate-list");
  list.replaceChildren(...result.candidates.map((c, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("role", "radio");
    button.setAttribute("aria-checked", String(c === state.chosen));
    button.setAttribute("aria-label", `Candidate ${i + 1}, predicted IoU ${result.scores[c].toFixed(2)}`);
    button.dataset.candidate = c;
    const canvas = document.createElement("canvas");
    paintLowResMask(canvas, result.lowRes.subarray(c * PLANE, (c + 1) * PLANE));
    const label = document.createElement("span");
    label.textContent = `${i + 1} · IoU ${result.scores[c].toFixed(2)}`;
    button.append(canvas, label);
    button.addEventListener("click", () => enqueue(() => pickCandidate(c)));
    return button;
  }));
}

function refreshControls() {
  const state = history.current;
  const hasMask = Boolean(chosenMask(state));
  $("undo-button").disabled = !history.canUndo;
  $("redo-button").disabled = !history.canRedo;
  $("reset-button").disabled = history.isEmpty;
  $("commit-button").disabled = !hasMask;
  const anyMask = hasMask || objects.items.length > 0;
  for (const button of document.querySelectorAll("[data-needs-mask]")) button.disabled = !anyMask;
  renderCandidates();
  updateEverythingButtons();
  document.body.dataset.prompts = String(state.points.length + (state.box ? 1 : 0));
}

function updateEverythingButtons() {
  $("everything-button").disabled = !app.ready || everything.running;
  $("everything-button").textContent = everything.active ? "Hide everything" : "Segment everything";
  $("everything-export").disabled = !everything.active;
}

function setEverythingStatus(text, fraction) {
  $("everything-status").textContent = fraction == null ? text : `${text} ${Math.round(fraction * 100)}%`;
}

async function toggleEverything() {
  if (!app.ready || everything.running) return;
  if (everything.active) {
    everything.clear();
    setEverythingStatus("", null);
    updateEverythingButtons();
    renderLayers();
    return;
  }
  $("everything-button").disabled = true;
  try {
    const count = await everything.run(app.image.id, app.image.uploadSize, everythingParameters());
    if (count === null) return; // another image was opened meanwhile
    setEverythingStatus(count ? `${count} mask${count === 1 ? "" : "s"}. Hover to highlight one, click to keep it.`
      : "No masks passed the thresholds: lower them in Settings.", null);
    app.hover = null;
    renderLayers();
  } catch (error) {
    setEverythingStatus("", null);
    showError(error);
  }
  updateEverythingButtons();
}

/** The settings' everything-mode parameters (names of the server's API). */
function everythingParameters() {
  return {
    points_per_side: Number($("everything-grid").value),
    pred_iou_thresh: Number($("everything-iou").value),
    stability_score_thresh: Number($("everything-stability").value),
  };
}

// ---------------------------------------------------------------- exports

/** The object the single-object exports act on: the selected one, else the one being edited. */
function exportTarget() {
  if (objects.selected) return objects.selected;
  const state = history.current;
  const mask = chosenMask(state);
  if (!mask) return null;
  return { name: `Object ${objects.nextId}`, color: nextColor(), mask, lowRes: chosenLowRes(state), score: state.result.scores[state.chosen] };
}

function allExportable() {
  const state = history.current;
  const mask = chosenMask(state);
  if (!mask) return [...objects.items];
  const editing = { name: `Object ${objects.nextId}`, color: nextColor(), mask, lowRes: chosenLowRes(state), score: state.result.scores[state.chosen] };
  return [...objects.items, editing];
}

/** The object's mask at the original image's resolution. */
async function fullResolutionMask(object) {
  const { originalSize, uploadSize } = app.image;
  if (originalSize[0] === uploadSize[0] && originalSize[1] === uploadSize[1]) return object.mask;
  if (object.lowRes) return decoder.upsample(object.lowRes, originalSize);
  return resizeMaskNearest(object.mask, uploadSize, originalSize);
}

const baseName = () => safeName(app.image.name.replace(/\.[^.]+$/, ""));

async function runExport(kind) {
  clearError();
  try {
    if (kind === "coco" || kind === "svg") {
      const list = allExportable();
      const full = await Promise.all(list.map(async (o) => ({ ...o, mask: await fullResolutionMask(o) })));
      if (kind === "coco") download(cocoJson(full, app.image.originalSize, app.image.name), `${baseName()}_masks.json`);
      else download(polygonsSvg(full, app.image.originalSize), `${baseName()}_polygons.svg`);
      return;
    }
    const target = exportTarget();
    if (!target) throw new Error("Make a mask first: hover and click on the image.");
    const maskPromise = fullResolutionMask(target);
    if (kind === "copy") {
      const png = maskPromise.then((mask) => cutoutPng(app.image.original, mask, app.image.originalSize)).then((r) => r.blob);
      await copyPng(png);
      setStatus(`Copied the cut-out of “${target.name}” to the clipboard.`);
      return;
    }
    const mask = await maskPromise;
    const name = `${baseName()}_${safeName(target.name)}`;
    if (kind === "cutout") download((await cutoutPng(app.image.original, mask, app.image.originalSize)).blob, `${name}_cutout.png`);
    else download(await maskPng(mask, app.image.originalSize), `${name}_mask.png`);
  } catch (error) {
    showError(error);
  }
}

async function exportEverything() {
  const { originalSize, uploadSize } = app.image;
  const list = everything.items.map((item, i) => ({
    name: `Mask ${i + 1}`, color: item.color, score: item.score,
    mask: resizeMaskNearest(item.mask, uploadSize, originalSize),
  }));
  download(cocoJson(list, originalSize, app.image.name), `${baseName()}_everything.json`);
}

// ---------------------------------------------------------------- wiring

const view = new StageView(
  { stage: $("stage"), image: $("stage-image"), canvas: $("mask-canvas"), svg: $("prompt-layer") },
  { onHover, onLeave, onPoint, onBox, onDragBox },
);
const objects = new ObjectList($("object-list"), $("objects-empty"), {
  onChange: () => { renderLayers(); refreshControls(); },
  onSelect: () => renderLayers(),
});

function setNegativeMode(on) {
  view.negativeMode = on;
  document.querySelector(`input[name="mode"][value="${on ? 0 : 1}"]`).checked = true;
}

function bindControls() {
  $("stage").addEventListener("blur", () => {
    app.keyboardCursor = null;
    view.setKeyboardCursor(null);
  });
  bindImageInputs({ fileInputs: [$("file-input"), $("file-input-more")], dropTarget: $("drop-zone"), onImage: openImage, onError: showError });
  $("undo-button").addEventListener("click", undo);
  $("redo-button").addEventListener("click", redo);
  $("reset-button").addEventListener("click", resetPrompts);
  $("commit-button").addEventListener("click", keepObject);
  $("error-close").addEventListener("click", clearError);
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", () => setNegativeMode(radio.value === "0" && radio.checked));
  }
  $("classroom-toggle").addEventListener("change", (event) => {
    classroom.show(event.target.checked);
    if (event.target.checked) {
      classroom.refresh();
      // It sits below the image, often below the fold: show that the switch did something.
      $("classroom").scrollIntoView({ block: "nearest" });
    }
  });
  $("help-button").addEventListener("click", () => $("help-dialog").showModal());
  $("export-cutout").addEventListener("click", () => runExport("cutout"));
  $("export-mask").addEventListener("click", () => runExport("mask"));
  $("export-copy").addEventListener("click", () => runExport("copy"));
  $("export-coco").addEventListener("click", () => runExport("coco"));
  $("export-svg").addEventListener("click", () => runExport("svg"));
  $("everything-button").addEventListener("click", toggleEverything);
  $("everything-export").addEventListener("click", exportEverything);
  $("backend-select").addEventListener("change", (event) => {
    localStorage.setItem(BACKEND_KEY, event.target.value);
    setStatus("Reload the page to switch the decoder backend.");
  });
  document.addEventListener("keydown", onKey);
}

/**
 * Prompting without a pointer: with the image focused, arrow keys move a cursor (Shift: 10x faster) that
 * previews like hovering, Space adds a point there (Shift+Space a negative one).
 */
function onStageKey(event) {
  if (!app.ready || event.ctrlKey || event.metaKey || event.altKey) return false;
  const [H, W] = app.image.uploadSize;
  const step = Math.max(1, Math.round(Math.max(H, W) / 100)) * (event.shiftKey ? 10 : 1);
  const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
  let cursor = app.keyboardCursor || [Math.floor(W / 2), Math.floor(H / 2)];
  if (moves[event.key]) {
    const [dx, dy] = moves[event.key];
    cursor = [Math.min(W - 1, Math.max(0, cursor[0] + dx)), Math.min(H - 1, Math.max(0, cursor[1] + dy))];
  } else if (event.key === " ") {
    onPoint(cursor[0], cursor[1], event.shiftKey || view.negativeMode, event.timeStamp);
    return true;
  } else {
    return false;
  }
  app.keyboardCursor = cursor;
  view.setKeyboardCursor(cursor);
  onHover(cursor[0], cursor[1], event.timeStamp);
  return true;
}

function onKey(event) {
  const target = event.target;
  if (target === $("stage") && onStageKey(event)) {
    event.preventDefault();
    return;
  }
  const typing = (target instanceof HTMLInputElement && !["checkbox", "radio", "button", "file"].includes(target.type)) ||
    target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement;
  if (typing || $("help-dialog").open) return;
  const ctrl = event.ctrlKey || event.metaKey;
  const key = event.key.toLowerCase();
  let handled = true;
  if (ctrl && key === "z") (event.shiftKey ? redo : undo)();
  else if (ctrl && key === "y") redo();
  else if (ctrl || event.altKey) handled = false;
  else if (key === "escape") everything.active ? toggleEverything() : resetPrompts();
  else if (key === "enter" && !target.closest?.("button, a, summary, input, select, textarea")) keepObject();
  else if (["1", "2", "3"].includes(key)) enqueue(() => pickCandidate(Number(key)));
  else if (key === "n") setNegativeMode(!view.negativeMode);
  else if (key === "c") $("classroom-toggle").click();
  else if (key === "e") toggleEverything();
  else if (key === "?") $("help-dialog").showModal();
  else if ((key === "delete" || key === "backspace") && objects.selected) objects.remove(objects.selectedId);
  else handled = false;
  if (handled) event.preventDefault();
}

bindControls();
app.decoderReady = startDecoder().catch((error) => {
  document.body.dataset.decoder = "error";
  showError(error);
  throw error;
});
app.decoderReady.catch(() => {}); // reported above; uploads awaiting it report again
loadGallery();
