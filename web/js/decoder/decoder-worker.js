// The decoder Web Worker: owns onnxruntime-web, the decoder session and the image embedding.
// The page never runs the model; it posts prompts here and gets back logits and binary masks.
//
// Messages in:  init {modelUrl, backend: "auto"|"wasm"|"webgpu", threads: 0 (automatic) or a count,
//                     ortVersion: the installed onnxruntime-web version (GET /api/model) or null,
//                     heartbeatMs: while starting, post a heartbeat this often (the page's watchdog)}
//               embedding {buffer: ArrayBuffer (wire format), imageSize: [H, W]}
//               image {tensors: {name: {data: Float32Array, dims}}, imageSize, sam2}: a crashed worker's image, as
//                     its trap error handed it back (the page restores it in a fresh worker)
//               decode {id, points: [{x, y, label}], box: [x0,y0,x1,y1]|null, maskInput: Float32Array|null,
//                       multimask: bool, outSize: [H, W], allMasks: bool, crop: bool (hovers: logits only
//                       under the image, see tokenExtent; the result says cropped)}
//               decode-many {id, prompts: [{points, box, maskInput, multimask?}], multimask, outSize, allMasks}
//               upsample {id, lowRes: Float32Array, outSize: [H, W]}
// Messages out: heartbeat, progress {stage, loaded, total}, ready {...}, embedding-ready {...}, image-ready,
//               result {..., computedPerImage: this run computed the image's per-image outputs (per-image.js)},
//               results {results: [result per prompt], runs, decodeMs, postMs}, mask {...},
//               error {id?, stage, message, trap: a WebAssembly trap, after which this worker's onnxruntime is unusable,
//                      image: with the first trap, the image's decoder inputs (transferred; the worker keeps none)}

import { decodeFeatures } from "./embedding.js";
import { applySingleMaskFallback, clampedMaskInput, isSam2Decoder, sam2Interface, unclampedLogits, zeroImageFeeds } from "./sam2-inputs.js";
import { LOW_RES_PLANE, LOW_RES_SIDE, STRETCHED, lowResPlane, maskFromLowRes, padLowRes, resizedSize, threshold, toModelFrame, tokenExtent } from "../mask-math.js";
import { PerImageOutputs } from "./per-image.js";
import { DownloadError, downloadResumable } from "../resumable-download.js";
import { decoderSessionOptions } from "./session-options.js";
import { MAX_PROMPTS_PER_RUN, capSharedMemory, decoderMemoryBytes, decoderMemoryUse } from "./wasm-memory.js";

/** Where onnxruntime-web's files are: the versioned path is cached immutably, the plain one revalidated. */
function ortDir(version) {
  return new URL(version ? `../../vendor/ort@${version}/` : "../../vendor/ort/", import.meta.url).href;
}

let ort = null;
let session = null;
let usesOrigImSize = false;
let sam2 = false; // a SAM 2 decoder (sam2-inputs.js)
let imageTensors = null; // the image's decoder inputs by name (SAM 1: image_embeddings; SAM 2: three)
let imageSize = null; // [H, W] of the encoded image
let inputSize = null; // [h, w] of that image inside the 1024 frame, or STRETCHED (SAM 2)
let emptyMask = null;
let batchable = false; // the graph decodes many prompts in one run (its prompt axis is dynamic)
let takesExtent = false; // the lowres graph upscales only the tokens it is given (valid_tokens, exporter 6)
let allTokens = null; // valid_tokens of every token: committed decodes, whose 256 x 256 logits may be fed back
let imageExtent = null; // valid_tokens of the tokens under the image: hovers, only painted
let perImage = null; // PerImageOutputs: what a run computes once per image and later runs take back
let oneToken = null; // valid_tokens of a single token: the run that computes them upscales next to nothing

/** Frees a run's output tensors (those onnxruntime holds outside JavaScript, as on WebGPU). */
const disposeAll = (outputs) => Object.values(outputs).forEach((tensor) => tensor.dispose?.());

/** The decoder model's bytes, with progress; a dropped transfer is retried and resumed (resumable-download.js). */
function downloadModel(url, sha256) {
  return downloadResumable(url, {
    what: "the decoder model",
    sha256,
    onProgress: (loaded, total, retry) => postMessage({ type: "progress", stage: retry ? "model-retry" : "model", loaded, total, ...retry }),
  });
}

async function webgpuAvailable() {
  if (!("gpu" in navigator)) return false;
  try {
    return Boolean(await navigator.gpu.requestAdapter());
  } catch {
    return false;
  }
}

async function init({ heartbeatMs = 0, ...options }) {
  const beat = heartbeatMs > 0 ? setInterval(() => postMessage({ type: "heartbeat" }), heartbeatMs) : null;
  try {
    return await startSession(options);
  } finally {
    clearInterval(beat);
  }
}

/**
 * Why WebAssembly threads cannot run here, in a visitor's words, or null when they can. Threads share memory
 * through SharedArrayBuffer, which browsers only give to cross-origin isolated pages (COOP + COEP); some give
 * none even then (WebKitGTK 2.50, the engine of Safari, is isolated yet has no SharedArrayBuffer).
 */
function whyOneThread(isolated) {
  if (!isolated) {
    return "The decoder runs on one thread, so masks take longer to appear: this page is not cross-origin isolated " +
      "(COOP and COEP headers), and browsers give SharedArrayBuffer, which threads need, only to isolated pages.";
  }
  if (typeof SharedArrayBuffer !== "function") {
    return "The decoder runs on one thread, so masks take longer to appear: this browser gives the page no " +
      "SharedArrayBuffer, which WebAssembly threads need, although the page is cross-origin isolated.";
  }
  return null;
}

async function startSession({ modelUrl, modelSha256 = null, backend = "auto", threads = 0, ortVersion = null }) {
  const started = performance.now();
  const ORT_DIR = ortDir(ortVersion);
  const tryWebgpu = backend === "webgpu" || (backend === "auto" && (await webgpuAvailable()));
  // The WebGPU bundle also carries the WASM backend, so a failed WebGPU session can fall back in place.
  ort = await import(ORT_DIR + (tryWebgpu ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs"));
  ort.env.wasm.wasmPaths = ORT_DIR;
  // ORT warns (on console.error) when shape ops stay on the CPU beside WebGPU: expected, not a user's problem.
  ort.env.logLevel = "error";
  ort.env.wasm.proxy = false; // this is already a worker
  const isolated = self.crossOriginIsolated === true;
  const singleThreadReason = whyOneThread(isolated);
  const wanted = threads > 0 ? threads : Math.min(4, navigator.hardwareConcurrency || 1);
  ort.env.wasm.numThreads = singleThreadReason ? 1 : Math.max(1, wanted);
  const model = await downloadModel(modelUrl, modelSha256);
  capSharedMemory(decoderMemoryBytes(model.byteLength)); // before onnxruntime creates its memory
  let provider = "wasm";
  let fallbackReason = null;
  if (tryWebgpu) {
    try {
      session = await ort.InferenceSession.create(model, decoderSessionOptions("webgpu"));
      provider = "webgpu";
    } catch (error) {
      fallbackReason = `WebGPU could not run the decoder (${error.message}); using WebAssembly.`;
    }
  }
  const wasmSession = () => ort.InferenceSession.create(model, decoderSessionOptions("wasm"));
  if (!session) session = await wasmSession();
  usesOrigImSize = session.inputNames.includes("orig_im_size");
  sam2 = isSam2Decoder(session);
  const promptAxis = session.inputMetadata?.find((m) => m.name === "point_coords")?.shape?.[0];
  batchable = !usesOrigImSize && typeof promptAxis === "string";
  takesExtent = session.inputNames.includes("valid_tokens");
  perImage = new PerImageOutputs(ort, session);
  allTokens = extentTensor([LOW_RES_SIDE / 4, LOW_RES_SIDE / 4]);
  oneToken = extentTensor([1, 1]);
  emptyMask = new ort.Tensor("float32", new Float32Array(LOW_RES_PLANE), [1, 1, LOW_RES_SIDE, LOW_RES_SIDE]);
  const warmupMs = await warmUp(session);
  let engineMs = null;
  if (provider === "webgpu" && backend === "auto") {
    // WebGPU is not faster on every machine (an integrated or emulated GPU, a busy one): a few decodes on
    // each engine, and the faster one stays. Only when the engine was left to the page.
    const wasm = await wasmSession();
    await warmUp(wasm);
    engineMs = { webgpu: await medianDecodeMs(session), wasm: await medianDecodeMs(wasm) };
    const keep = engineMs.wasm < engineMs.webgpu ? wasm : session;
    await (keep === wasm ? session : wasm).release?.();
    if (keep === wasm) provider = "wasm";
    session = keep;
  }
  return {
    type: "ready",
    provider,
    engineMs,
    threads: provider === "wasm" ? ort.env.wasm.numThreads : null,
    crossOriginIsolated: isolated,
    singleThreadReason: provider === "wasm" ? singleThreadReason : null,
    interface: sam2 ? sam2Interface(session) : usesOrigImSize ? "official" : "lowres",
    batchable,
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    modelBytes: model.byteLength,
    wasmMemory: decoderMemoryUse(),
    loadMs: performance.now() - started,
    warmupMs,
    fallbackReason,
    // Which onnxruntime-web build runs it. Its WebGPU build's WebAssembly is instrumented to wait for the GPU
    // (asyncify), so a WASM session there decodes slower than in the plain build (decoder-client.js).
    ortBuild: tryWebgpu ? "webgpu" : "wasm",
  };
}

/**
 * One throw-away decode while the image is still uploading and encoding: the first run of a session
 * allocates its buffers (and compiles shaders on WebGPU), which would otherwise delay the first hover.
 */
async function warmUp(target) {
  const started = performance.now();
  try {
    const outputs = await target.run(warmUpFeeds());
    disposeAll(outputs);
  } catch {
    return null; // a real decode will report the problem in words
  }
  return performance.now() - started;
}

/** The median time of a few decodes of a click on an empty embedding (the engines' race at start-up). */
async function medianDecodeMs(target, runs = 3) {
  const times = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    const outputs = await target.run(warmUpFeeds());
    times.push(performance.now() - started);
    disposeAll(outputs);
  }
  return times.sort((a, b) => a - b)[runs >> 1];
}

function warmUpFeeds() {
  const feeds = {
    ...zeroImageFeeds(ort, session),
    point_coords: new ort.Tensor("float32", Float32Array.of(512, 512, 0, 0), [1, 2, 2]),
    point_labels: new ort.Tensor("float32", Float32Array.of(1, -1), [1, 2]),
    mask_input: emptyMask,
    has_mask_input: new ort.Tensor("float32", Float32Array.of(0), [1]),
  };
  if (usesOrigImSize) feeds.orig_im_size = new ort.Tensor("float32", Float32Array.of(1024, 1024), [2]);
  if (takesExtent) feeds.valid_tokens = allTokens;
  return { ...feeds, ...perImage.plan(false).feeds };
}

const extentTensor = ([rows, cols]) => new ort.Tensor("int64", BigInt64Array.of(BigInt(rows), BigInt(cols)), [2]);

function setEmbedding({ buffer, imageSize: size }) {
  const started = performance.now();
  // The previous image's inputs are written over, not dropped: in WebKit a dropped 4 MB array stays resident
  // until JavaScriptCore's next collection, which may be photos away (docs/webkit.md). Messages run one at a
  // time, so no run still reads them; a bad embedding leaves no image (imageTensors stays null).
  const previous = Object.fromEntries(Object.entries(imageTensors ?? {}).map(([name, tensor]) => [name, tensor.data]));
  imageTensors = null;
  if (perImage) perImage.kept = null;
  const { tensors, dtype, sam2: isSam2 } = decodeFeatures(buffer, previous);
  useImage(tensors, size, isSam2);
  const dims = Object.values(tensors)[0].dims;
  return { type: "embedding-ready", dtype, dims, inputSize, parseMs: performance.now() - started };
}

/** Makes `tensors` ({name: {data, dims}}, the decoder's image inputs) the image every prompt is decoded on. */
function useImage(tensors, size, isSam2) {
  if (session && isSam2 !== sam2) {
    throw new Error(`The embedding is ${isSam2 ? "SAM 2" : "SAM 1"}'s but the decoder ${sam2 ? "SAM 2" : "SAM 1"}'s.`);
  }
  imageTensors = {};
  for (const [name, { data, dims }] of Object.entries(tensors)) imageTensors[name] = new ort.Tensor("float32", data, dims);
  imageSize = size;
  inputSize = isSam2 ? STRETCHED : resizedSize(size[0], size[1]);
  imageExtent = extentTensor(tokenExtent(inputSize));
}

/** Takes back the image a crashed worker handed over with its trap error. */
function restoreImage({ tensors, imageSize: size, sam2: isSam2 }) {
  useImage(tensors, size, isSam2);
  return { type: "image-ready" };
}

/**
 * After a trap: the image's decoder inputs, handed over to the page (transferred, so this worker keeps none)
 * for a fresh worker to take back; null when there is no image or it was handed over already.
 */
function handOverImage() {
  if (!imageTensors) return [null, []];
  const tensors = Object.fromEntries(Object.entries(imageTensors).map(([name, t]) => [name, { data: t.data, dims: t.dims }]));
  const image = { tensors, imageSize, sam2 };
  imageTensors = null;
  return [image, Object.values(tensors).map(({ data }) => data.buffer)];
}

/** A prompt's tokens in the model's frame: its points, then a box's two corners or one padding point. */
function promptTokens({ points = [], box = null }) {
  const coords = [];
  const labels = [];
  for (const p of points) {
    coords.push(...toModelFrame([p.x, p.y], imageSize, inputSize));
    labels.push(p.label);
  }
  if (box) {
    coords.push(...toModelFrame([box[0], box[1]], imageSize, inputSize), ...toModelFrame([box[2], box[3]], imageSize, inputSize));
    labels.push(2, 3);
  }
  // Without a box the prompt encoder expects a padding point (0, 0) labelled -1; SAM 2's predictor passes a
  // box as two points, so it always gets one.
  if (!box || sam2) {
    coords.push(0, 0);
    labels.push(-1);
  }
  return { coords, labels };
}

/**
 * One session run for prompts with the same number of tokens (a padding token would change the masks), in
 * the order Meta's SamOnnxModel expects the inputs. Mask prompts: none (one empty mask, flag 0) or one mask
 * and flag per prompt (zeros and 0 for the prompts without).
 */
async function runPrompts(prompts, crop = false, extent = crop ? imageExtent : allTokens) {
  const count = prompts.length;
  const tokens = prompts.map(promptTokens);
  const n = tokens[0].labels.length;
  const coords = new Float32Array(count * n * 2);
  const labels = new Float32Array(count * n);
  tokens.forEach((t, b) => {
    coords.set(t.coords, b * n * 2);
    labels.set(t.labels, b * n);
  });
  const feeds = {
    ...imageTensors,
    point_coords: new ort.Tensor("float32", coords, [count, n, 2]),
    point_labels: new ort.Tensor("float32", labels, [count, n]),
    mask_input: emptyMask,
    has_mask_input: new ort.Tensor("float32", Float32Array.of(0), [1]),
  };
  // A mask prompt changes the image rows: the graph then projects that prompt's own, and they are not kept.
  const withMask = prompts.some((p) => p.maskInput);
  if (withMask) {
    const masks = new Float32Array(count * LOW_RES_PLANE);
    const flags = new Float32Array(count);
    prompts.forEach((p, b) => {
      if (!p.maskInput) return;
      masks.set(sam2 ? clampedMaskInput(p.maskInput) : p.maskInput, b * LOW_RES_PLANE);
      flags[b] = 1;
    });
    feeds.mask_input = new ort.Tensor("float32", masks, [count, 1, LOW_RES_SIDE, LOW_RES_SIDE]);
    feeds.has_mask_input = new ort.Tensor("float32", flags, [count]);
  }
  if (usesOrigImSize) feeds.orig_im_size = new ort.Tensor("float32", Float32Array.from(imageSize), [2]);
  if (takesExtent) feeds.valid_tokens = extent;
  const plan = perImage.plan(!withMask);
  const embedding = imageTensors;
  const started = performance.now();
  const outputs = await session.run({ ...feeds, ...plan.feeds }, plan.fetches);
  const runMs = performance.now() - started;
  if (plan.computes) {
    // Kept for the image only if it is still the current one.
    const computed = perImage.take(outputs);
    if (imageTensors === embedding) perImage.kept = computed;
  }
  return { outputs, runMs, computedPerImage: plan.computes };
}

/** Prompt b's candidates of a run's outputs: {scores, lowRes (copies), candidates, best, masks}. */
function promptResult(outputs, b, { multimask, outSize, allMasks }) {
  const k = outputs.iou_predictions.dims[1];
  const scores = Float32Array.from(outputs.iou_predictions.data.subarray(b * k, (b + 1) * k));
  const logits = sam2 ? unclampedLogits(outputs) : outputs.low_res_masks;
  const [, , h, w] = logits.dims;
  const plane = h * w;
  const cropped = plane !== LOW_RES_PLANE;
  const ownLogits = logits.data.subarray(b * k * plane, (b + 1) * k * plane);
  // A cropped run's logits go back into 256 x 256 planes (zeros outside the image, never read).
  const lowRes = cropped ? padLowRes(ownLogits, k, [h / 4, w / 4]) : Float32Array.from(ownLogits);
  if (sam2 && !multimask) applySingleMaskFallback(lowRes, scores, LOW_RES_PLANE);
  // With four outputs, index 0 is the single-mask token and 1..3 the three ambiguity masks (as in Meta's predictor).
  const candidates = k === 1 ? [0] : multimask ? [1, 2, 3] : [0];
  let best = candidates[0];
  for (const c of candidates) if (scores[c] > scores[best]) best = c;
  const wanted = allMasks ? candidates : [best];
  const sameSize = outSize[0] === imageSize[0] && outSize[1] === imageSize[1];
  const masks = {};
  for (const c of wanted) {
    if (usesOrigImSize && outputs.masks && sameSize) {
      // The official interface runs one prompt at a time (b = 0).
      const [, , h, w] = outputs.masks.dims;
      const plane = h * w;
      masks[c] = threshold(outputs.masks.data.subarray(c * plane, (c + 1) * plane));
    } else {
      masks[c] = maskFromLowRes(lowResPlane(lowRes, c), inputSize, outSize);
    }
  }
  return { scores, lowRes, candidates, best, masks, cropped };
}

function checkReady(prompts) {
  if (!session) throw new Error("The decoder is not loaded yet.");
  if (!imageTensors) throw new Error("No image embedding has arrived yet.");
  if (prompts.some((p) => !p.points?.length && !p.box)) throw new Error("Add a point or a box first.");
}

const transferOf = (result) => [result.lowRes.buffer, ...Object.values(result.masks).map((m) => m.buffer)];

async function decode({ id, points, box, maskInput, multimask, outSize, allMasks, crop = false }) {
  const prompt = { points, box, maskInput };
  checkReady([prompt]);
  const { outputs, runMs: decodeMs, computedPerImage } = await runPrompts([prompt], crop);
  const postStarted = performance.now();
  const result = promptResult(outputs, 0, { multimask, outSize, allMasks });
  disposeAll(outputs);
  const postMs = performance.now() - postStarted;
  const wasmMemoryBytes = decoderMemoryUse()?.bytes ?? null;
  return [{ type: "result", id, ...result, outSize, decodeMs, postMs, wasmMemoryBytes, computedPerImage }, transferOf(result)];
}

/**
 * Many independent prompts on the image, as few runs as the graph allows: prompts with the same number of
 * tokens share one run when the graph has a prompt axis (the lowres graphs), else one run each. Each prompt's
 * candidates equal those of its own decode. prompts: [{points, box, maskInput, multimask?}].
 */
async function decodeMany({ id, prompts, multimask = false, outSize, allMasks = true }) {
  if (!Array.isArray(prompts) || !prompts.length) throw new Error("Give at least one prompt.");
  checkReady(prompts);
  const groups = new Map(); // "token count/part" -> prompt indices
  prompts.forEach((p, i) => {
    const tokens = batchable ? promptTokens(p).labels.length : `single ${i}`;
    // A run holds at most MAX_PROMPTS_PER_RUN prompts: the decoder's memory is sized for that many.
    let part = 0;
    while ((groups.get(`${tokens}/${part}`) || []).length >= MAX_PROMPTS_PER_RUN) part++;
    const key = `${tokens}/${part}`;
    groups.set(key, [...(groups.get(key) || []), i]);
  });
  const results = new Array(prompts.length);
  let decodeMs = 0, postMs = 0;
  for (const indices of groups.values()) {
    const { outputs, runMs } = await runPrompts(indices.map((i) => prompts[i]));
    decodeMs += runMs;
    const postStarted = performance.now();
    indices.forEach((i, b) => {
      results[i] = promptResult(outputs, b, { multimask: prompts[i].multimask ?? multimask, outSize, allMasks });
    });
    disposeAll(outputs);
    postMs += performance.now() - postStarted;
  }
  return [
    { type: "results", id, results, outSize, runs: groups.size, decodeMs, postMs, wasmMemoryBytes: decoderMemoryUse()?.bytes ?? null },
    results.flatMap(transferOf),
  ];
}

function upsample({ id, lowRes, outSize }) {
  const mask = maskFromLowRes(lowRes, inputSize, outSize);
  return [{ type: "mask", id, mask, outSize }, [mask.buffer]];
}

/**
 * Whether an error is a WebAssembly trap (an out-of-bounds access, `unreachable`): the instance's memory may be
 * left inconsistent, so only a fresh worker can be trusted. onnxruntime-web passes a trap in session creation on
 * as is, and one in its runtime's start inside "no available backend found. ERR: [wasm] RuntimeError: …".
 */
function isWasmTrap(error) {
  // JavaScriptCore's and V8's wording for an out-of-bounds access, for a trap passed on as a plain Error.
  const words = /\bRuntimeError\b|out of bounds memory access|memory access out of bounds/i;
  return error instanceof WebAssembly.RuntimeError || words.test(String(error?.message ?? error));
}

/**
 * Whether a start failed on the network: onnxruntime-web's own script or WebAssembly did not arrive (the engines'
 * words for a failed fetch or module import, also inside onnxruntime's "no available backend found"). A fresh
 * worker tries again (a failed module import stays failed in this worker). The model's download retries by itself:
 * its DownloadError is final.
 */
function isNetworkFailure(error) {
  if (error instanceof DownloadError) return false;
  const words = /Failed to fetch|NetworkError|Load failed|Importing a module script failed|error loading dynamically imported module|fetching of the wasm failed/i;
  return words.test(String(error?.message ?? error));
}

/**
 * Computes the image's per-image outputs soon after its embedding is in, so that its first prompt decodes as fast
 * as the ones after it (that prompt's run would compute them, 15-16 ms more; docs/benchmarks.md). A throw-away
 * click, upscaled on one token: onnxruntime-web runs the whole graph whatever is fetched. Like warmUp, it leaves
 * a failure to the next decode to report.
 */
async function keepPerImageOutputs() {
  if (!perImage?.names.length || !imageTensors || perImage.kept) return;
  try {
    const { outputs } = await runPrompts([{ points: [{ x: 0, y: 0, label: 1 }] }], false, oneToken);
    disposeAll(outputs);
  } catch {
    // the next decode computes them itself
  }
}

// After this long without a prompt, a new image's per-image outputs are computed ahead of it. A page that decodes
// as soon as the image is ready (a script, a batch) runs first and computes them in its own run; a person's first
// hover comes later than this.
const PER_IMAGE_DELAY_MS = 50;

const handlers = { init, embedding: setEmbedding, image: restoreImage, decode, "decode-many": decodeMany, upsample };

let trapped = null; // the first trap's message: this worker's onnxruntime is not used again

// Messages are handled one at a time, in order: the session is not re-entrant.
let queue = Promise.resolve();
self.onmessage = (event) => {
  const message = event.data;
  queue = queue.then(async () => {
    try {
      if (trapped) throw new Error(`The decoder crashed earlier: ${trapped}`);
      const handler = handlers[message.type];
      if (!handler) throw new Error(`Unknown message type "${message.type}".`);
      const answer = await handler(message);
      const [reply, transfer] = Array.isArray(answer) ? answer : [answer, []];
      postMessage({ ...reply, id: message.id }, transfer);
      if (reply.type === "embedding-ready" || reply.type === "image-ready") {
        setTimeout(() => { queue = queue.then(keepPerImageOutputs); }, PER_IMAGE_DELAY_MS);
      }
    } catch (error) {
      const text = error.message || String(error);
      const trap = Boolean(trapped) || isWasmTrap(error);
      const [image, transfer] = trap && !trapped ? handOverImage() : [null, []];
      if (trap) trapped ??= text;
      const network = message.type === "init" && !trap && isNetworkFailure(error);
      postMessage({ type: "error", id: message.id, stage: message.type, message: text, trap, network, image }, transfer);
    }
  });
};
