// Wires the page: the client (decoder, image, editor) to the stage, the panels, the status line and the keyboard.

import { Classroom } from "./classroom.js";
import { SamClient } from "../client.js";
import { EverythingMode } from "../everything.js";
import { EverythingPanel } from "./everything-panel.js";
import { ExportActions } from "./export-actions.js";
import { FindPanel } from "./find-panel.js";
import { showGallery } from "./gallery.js";
import { bindImageInputs, fetchImage } from "../image-input.js";
import { bindKeyboard, KeyboardCursor } from "../keyboard.js";
import { maskStats } from "../mask-math.js";
import { showEngine, showModelFacts } from "./model-facts.js";
import { ObjectList } from "./objects.js";
import { PointerKind } from "./pointer-kind.js";
import { PromptPanel } from "./prompt-panel.js";
import { StageView } from "../stage-view.js";
import { StatusLine } from "./status-line.js";
import { TextFind } from "../text-find.js";
import { describeSelection, readyStatus } from "./wording.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const BACKEND_KEY = "sam-web.backend";

const status = new StatusLine({
  text: $("status-text"), progress: $("status-progress"), secondary: $("status-secondary"),
  errorBanner: $("error-banner"), errorText: $("error-text"), errorClose: $("error-close"),
});
const showError = (error) => status.showError(error);
const classroom = new Classroom();
let dragBox = null;
let readyLine = null; // () => the "Ready: …" status of the image on show, worded for the pointer in use
let refining = null; // the phrase of a found instance being refined in the editor: its name when kept
const client = new SamClient({
  onStatus: (text, progress, task) => status.set(text, progress, task),
  onStage: (stage) => classroom.setStage(stage),
  onEngine: showDecoderEngine,
  editor: {
    onChange: () => { refreshControls(); renderOverlay(); },
    onPreview: () => renderOverlay(),
    onPrompts: (points, box) => view.drawPrompts(points, box),
    onDecode: (result, chosen, cause) => {
      classroom.addDecode(result, chosen);
      if (cause === "commit" || cause === "pick") status.set(describeSelection(result, chosen, editor.size));
    },
    onKeep: (kept) => {
      const named = refining ? { name: refining, category: refining } : {};
      refining = null;
      const object = objects.add({ ...kept, area: maskStats(kept.mask, editor.size).area, ...named });
      prompts.setNegative(false); // the next object starts with "Add area"
      status.set(`Kept “${object.name}” (${object.area.toLocaleString()} px). Point at the next object.`);
    },
    onPending: (count) => { document.body.dataset.pending = String(count); },
    onError: showError,
  },
});
const { editor } = client;

const view = new StageView(
  { stage: $("stage"), image: $("stage-image"), canvas: $("mask-canvas"), svg: $("prompt-layer"), zoomReset: $("zoom-reset") },
  {
    onHover: (x, y, time) => everything.hoverAt(x, y) || editor.hoverAt(x, y, view.negativeMode, time),
    onLeave: () => { editor.leave(); everything.leave(); },
    onPoint: (x, y, negative, time) => everything.pointAt(x, y) ||
      editor.point(x, y, negative, time)?.then(() => editor.mask && classroom.playClick(editor.state.result)),
    onBox: (box) => everything.active || editor.box(box),
    onDragBox: (box) => {
      dragBox = box;
      view.drawPrompts(editor.state.points, editor.state.box, box);
    },
  },
);
const prompts = new PromptPanel(editor, view);
const objects = new ObjectList($("object-list"), $("objects-empty"), {
  onChange: () => { renderLayers(); refreshControls(); },
  onSelect: () => { renderLayers(); refreshControls(); },
});
const everything = new EverythingPanel(
  new EverythingMode(() => {}),
  { button: $("everything-button"), exportButton: $("everything-export"), status: $("everything-status"),
    grid: $("everything-grid"), iou: $("everything-iou"), stability: $("everything-stability"), crops: $("everything-crops"),
    overlay: $("stage-overlay"), progress: $("everything-progress"), overlayText: $("overlay-text"),
    cancel: $("everything-cancel"), close: $("overlay-close") },
  {
    image: () => (editor.ready ? client.image : null),
    onLayers: renderLayers,
    onTake: (item) => objects.add({ mask: item.mask, lowRes: null, score: item.score ?? null, area: item.area }),
    onStatus: (text, fraction) => status.set(text, fraction),
    onError: showError,
  },
);
const finder = new FindPanel(
  new TextFind(client),
  { form: $("find-form"), input: $("find-text"), button: $("find-button"), status: $("find-status"),
    list: $("find-list"), keepAll: $("find-keep-all"), threshold: $("find-threshold") },
  {
    ready: () => editor.ready,
    onLayers: renderLayers,
    // A kept instance is named after its phrase, which is also its COCO category.
    onKeep: (item) => objects.add({ mask: item.mask, lowRes: item.lowRes, score: item.iou, area: item.area, name: item.label, category: item.label }),
    onRefine: (item) => {
      refining = item.label;
      editor.reset();
      editor.box(item.box.map(Math.round));
      status.set(`Refining “${item.label}”: click to add or remove area, then Keep object.`);
    },
    onStatus: (text, fraction) => status.set(text, fraction),
    onError: showError,
  },
);
const exportActions = new ExportActions({
  client, objects, everything: everything.mode, onStatus: (text) => status.set(text), onError: showError,
});
const cursor = new KeyboardCursor({
  size: () => (editor.ready ? editor.size : null),
  onMove: (x, y, time) => view.handlers.onHover(x, y, time),
  onPoint: (x, y, negative, time) => view.handlers.onPoint(x, y, negative, time),
  negativeMode: () => view.negativeMode,
  show: (point) => view.setKeyboardCursor(point),
});
const pointer = new PointerKind(() => {
  if (readyLine && status.current.startsWith("Ready")) status.set(readyLine());
});

// ---------------------------------------------------------------- drawing

function renderOverlay() {
  if (!client.image) return;
  const mask = editor.mask;
  const hover = editor.hoverMask;
  view.render({
    current: mask ? { mask, color: objects.nextColor } : null,
    hover: hover && !everything.active ? { mask: hover, color: objects.nextColor } : null,
  });
  view.drawPrompts(editor.state.points, editor.state.box, dragBox);
}

function renderLayers() {
  const kept = objects.items.map((o) => ({ mask: o.mask, color: o.color, emphasis: o.id === objects.selectedId ? "selected" : undefined }));
  view.setLayers([...everything.mode.layers(), ...finder.find.layers(), ...kept]);
  renderOverlay();
}

function refreshControls() {
  prompts.refresh();
  const anyMask = Boolean(editor.mask) || objects.items.length > 0;
  for (const button of document.querySelectorAll("[data-needs-mask]")) button.disabled = !anyMask;
  $("export-target").textContent = exportActions.describeTarget();
  everything.refresh();
  finder.refresh();
  document.body.dataset.prompts = String(editor.state.points.length + (editor.state.box ? 1 : 0));
}

// ---------------------------------------------------------------- the decoder and images

/** Where the decoder runs, in Settings and the classroom view: at start, and again if a crash changed it. */
function showDecoderEngine({ info, runsOn }) {
  showEngine(info, runsOn);
  classroom.setProvider(runsOn);
}

async function startDecoder() {
  const backend = params.get("backend") || localStorage.getItem(BACKEND_KEY) || "auto";
  $("backend-select").value = backend;
  const { model, entry, info, runsOn } = await client.start({
    decoder: params.get("decoder"), backend, threads: Number(params.get("threads")) || 0,
  });
  showModelFacts({ model, entry, info });
  showDecoderEngine({ info, runsOn });
  classroom.setModel({ modelType: model.model_type, weights: model.weights, encoderPath: model.encoder_path });
  status.decoderDone();
  if (info.fallbackReason) showError(new Error(info.fallbackReason));
  if (!client.image) status.set("Ready. Choose, drop or paste an image, or pick a sample.");
}

/** A new image on the stage, nothing of the previous one left. */
function showImage(image) {
  everything.clear();
  finder.clear();
  refining = null;
  objects.clear();
  dragBox = null;
  readyLine = null;
  $("empty-state").hidden = true;
  $("image-actions").hidden = false;
  $("stage").hidden = false;
  $("drop-zone").classList.add("has-image");
  $("stage").classList.add("busy");
  view.setImage(image.original, image.uploadSize);
  view.setLayers([]);
  view.render();
  $("drop-zone").scrollIntoView({ block: "nearest" }); // e.g. opened from the gallery, below the image on a phone
  const [H, W] = image.originalSize;
  $("fact-image").textContent = `${image.name}, ${W}×${H}` +
    (image.downscaled ? ` (sent at ${image.uploadSize[1]}×${image.uploadSize[0]})` : "");
  refreshControls();
}

async function openImage(blob, name) {
  status.clearError();
  cursor.clear();
  document.body.dataset.image = "loading";
  let image;
  try {
    image = await client.prepare(blob, name);
  } catch (error) {
    showError(error); // not an image: the one on screen stays as it was, everything mode included
    document.body.dataset.image = editor.ready ? "ready" : client.image ? "error" : "none";
    return;
  }
  if (!image) return;
  showImage(image);
  try {
    const loaded = await client.load(image, { format: params.get("format") });
    if (!loaded) return;
    const { info, embedding, dtype } = loaded;
    classroom.setImage({ encodeMs: info.encode_ms, cacheHit: info.cache_hit, bytes: embedding.bytes,
      wireBytes: embedding.wireBytes, format: dtype, downloadMs: embedding.ms });
    document.body.dataset.image = "ready";
    $("stage").classList.remove("busy");
    status.imageDone();
    readyLine = () => readyStatus(loaded, pointer.touch);
    status.set(readyLine());
    refreshControls();
    // Keyboard users land on the image, unless they went on to another control meanwhile.
    if (!document.activeElement || document.activeElement === document.body ||
        document.activeElement.closest(".gallery, .file-button, .empty-state")) $("stage").focus({ preventScroll: true });
  } catch (error) {
    if (!client.isCurrent(image)) return;
    document.body.dataset.image = "error";
    $("stage").classList.remove("busy");
    status.imageDone();
    status.set("The image could not be prepared.");
    showError(error);
  }
}

// ---------------------------------------------------------------- controls

function bindControls() {
  bindImageInputs({ fileInputs: [$("file-input"), $("file-input-more")], dropTarget: $("drop-zone"), onImage: openImage, onError: showError });
  classroom.bindToggle($("classroom-toggle"));
  $("help-button").addEventListener("click", () => $("help-dialog").showModal());
  for (const kind of ["cutout", "mask", "copy", "coco", "svg"]) {
    $(`export-${kind}`).addEventListener("click", () => { status.clearError(); exportActions.run(kind); });
  }
  $("everything-export").addEventListener("click", () => exportActions.everythingCoco());
  $("backend-select").addEventListener("change", (event) => {
    localStorage.setItem(BACKEND_KEY, event.target.value);
    status.set("Reload the page to switch the decoder backend.");
  });
  bindKeyboard({
    stage: $("stage"), cursor, dialog: $("help-dialog"),
    actions: {
      undo: () => editor.undo(), redo: () => editor.redo(), keep: () => editor.keep(), pick: (n) => editor.pickCandidate(n),
      escape: () => (everything.mode.running ? everything.cancel() : everything.active ? everything.toggle() : editor.reset()),
      toggleNegative: () => prompts.setNegative(!view.negativeMode),
      toggleClassroom: () => $("classroom-toggle").click(),
      toggleEverything: () => everything.toggle(),
      help: () => $("help-dialog").showModal(),
      deleteSelected: () => objects.removeSelected(),
    },
  });
}

bindControls();
startDecoder().catch((error) => {
  document.body.dataset.decoder = "error";
  showError(error);
});
showGallery($("gallery-list"), async (item) => {
  try {
    openImage(await fetchImage(item.url, item.name), item.name);
  } catch (error) {
    showError(error);
  }
});
