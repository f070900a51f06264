// The decoder Web Worker: owns onnxruntime-web, the decoder session and the image embedding.
// The page never runs the model; it posts prompts here and gets back logits and binary masks.
//
// Messages in:  init {modelUrl, backend: "auto"|"wasm"|"webgpu", threads: 0 (automatic) or a count,
//                     ortVersion: the installed onnxruntime-web version (GET /api/model) or null,
//                     heartbeatMs: while starting, post a heartbeat this often (the page's watchdog)}
//               embedding {buffer: ArrayBuffer (wire format), imageSize: [H, W]}
//               decode {id, points: [{x, y, label}], box: [x0,y0,x1,y1]|null, maskInput: Float32Array|null,
//                       multimask: bool, outSize: [H, W], allMasks: bool}
//               upsample {id, lowRes: Float32Array, outSize: [H, W]}
// Messages out: heartbeat, progress {stage, loaded, total}, ready {...}, embedding-ready {...}, result {...},
//               mask {...}, error {id?, stage, message}

import { decodeEmbedding } from "./embedding.js";
import { LOW_RES_PLANE, LOW_RES_SIDE, lowResPlane, maskFromLowRes, resizedSize, threshold, toModelFrame } from "../mask-math.js";
import { readBody } from "../read-body.js";
import { capSharedMemory, decoderMemoryBytes, decoderMemoryUse } from "./wasm-memory.js";

/** Where onnxruntime-web's files are: the versioned path is cached immutably, the plain one revalidated. */
function ortDir(version) {
  return new URL(version ? `../../vendor/ort@${version}/` : "../../vendor/ort/", import.meta.url).href;
}

let ort = null;
let session = null;
let usesOrigImSize = false;
let embeddingTensor = null;
let imageSize = null; // [H, W] of the encoded image
let inputSize = null; // [h, w] of that image inside the 1024 frame
let emptyMask = null;

async function fetchWithProgress(url, stage) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`The decoder model could not be downloaded (HTTP ${response.status}).`);
  const total = Number(response.headers.get("Content-Length")) || 0;
  return readBody(response, (loaded) => postMessage({ type: "progress", stage, loaded, total }));
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

async function startSession({ modelUrl, backend = "auto", threads = 0, ortVersion = null }) {
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
  const model = await fetchWithProgress(modelUrl, "model");
  capSharedMemory(decoderMemoryBytes(model.byteLength)); // before onnxruntime creates its memory
  let provider = "wasm";
  let fallbackReason = null;
  if (tryWebgpu) {
    try {
      session = await ort.InferenceSession.create(model, { executionProviders: ["webgpu"], logSeverityLevel: 3 });
      provider = "webgpu";
    } catch (error) {
      fallbackReason = `WebGPU could not run the decoder (${error.message}); using WebAssembly.`;
    }
  }
  if (!session) {
    session = await ort.InferenceSession.create(model, {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
      logSeverityLevel: 3,
    });
  }
  usesOrigImSize = session.inputNames.includes("orig_im_size");
  emptyMask = new ort.Tensor("float32", new Float32Array(LOW_RES_PLANE), [1, 1, LOW_RES_SIDE, LOW_RES_SIDE]);
  const warmupMs = await warmUp();
  return {
    type: "ready",
    provider,
    threads: provider === "wasm" ? ort.env.wasm.numThreads : null,
    crossOriginIsolated: isolated,
    singleThreadReason: provider === "wasm" ? singleThreadReason : null,
    interface: usesOrigImSize ? "official" : "lowres",
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    modelBytes: model.byteLength,
    wasmMemory: decoderMemoryUse(),
    loadMs: performance.now() - started,
    warmupMs,
    fallbackReason,
  };
}

/**
 * One throw-away decode while the image is still uploading and encoding: the first run of a session
 * allocates its buffers (and compiles shaders on WebGPU), which would otherwise delay the first hover.
 */
async function warmUp() {
  const started = performance.now();
  const feeds = {
    image_embeddings: new ort.Tensor("float32", new Float32Array(256 * 64 * 64), [1, 256, 64, 64]),
    point_coords: new ort.Tensor("float32", Float32Array.of(512, 512, 0, 0), [1, 2, 2]),
    point_labels: new ort.Tensor("float32", Float32Array.of(1, -1), [1, 2]),
    mask_input: emptyMask,
    has_mask_input: new ort.Tensor("float32", Float32Array.of(0), [1]),
  };
  if (usesOrigImSize) feeds.orig_im_size = new ort.Tensor("float32", Float32Array.of(1024, 1024), [2]);
  try {
    const outputs = await session.run(feeds);
    for (const name of Object.keys(outputs)) outputs[name].dispose?.();
  } catch {
    return null; // a real decode will report the problem in words
  }
  return performance.now() - started;
}

function setEmbedding({ buffer, imageSize: size }) {
  const started = performance.now();
  const { data, dims, dtype } = decodeEmbedding(buffer);
  embeddingTensor = new ort.Tensor("float32", data, dims);
  imageSize = size;
  inputSize = resizedSize(size[0], size[1]);
  return { type: "embedding-ready", dtype, dims, inputSize, parseMs: performance.now() - started };
}

/** Decoder inputs for the prompts, in the order Meta's SamOnnxModel expects them. */
function promptTensors(points, box) {
  const coords = [];
  const labels = [];
  for (const p of points) {
    coords.push(...toModelFrame([p.x, p.y], imageSize));
    labels.push(p.label);
  }
  if (box) {
    coords.push(...toModelFrame([box[0], box[1]], imageSize), ...toModelFrame([box[2], box[3]], imageSize));
    labels.push(2, 3);
  } else {
    // Without a box the prompt encoder expects a padding point (0, 0) labelled -1.
    coords.push(0, 0);
    labels.push(-1);
  }
  const n = labels.length;
  return {
    point_coords: new ort.Tensor("float32", Float32Array.from(coords), [1, n, 2]),
    point_labels: new ort.Tensor("float32", Float32Array.from(labels), [1, n]),
  };
}

async function decode({ id, points, box, maskInput, multimask, outSize, allMasks }) {
  if (!session) throw new Error("The decoder is not loaded yet.");
  if (!embeddingTensor) throw new Error("No image embedding has arrived yet.");
  if (!points.length && !box) throw new Error("Add a point or a box first.");
  const feeds = {
    image_embeddings: embeddingTensor,
    ...promptTensors(points, box),
    mask_input: maskInput
      ? new ort.Tensor("float32", maskInput, [1, 1, LOW_RES_SIDE, LOW_RES_SIDE])
      : emptyMask,
    has_mask_input: new ort.Tensor("float32", Float32Array.of(maskInput ? 1 : 0), [1]),
  };
  if (usesOrigImSize) feeds.orig_im_size = new ort.Tensor("float32", Float32Array.from(imageSize), [2]);
  const started = performance.now();
  const outputs = await session.run(feeds);
  const decodeMs = performance.now() - started;

  const scores = Float32Array.from(outputs.iou_predictions.data);
  const lowRes = Float32Array.from(outputs.low_res_masks.data);
  const k = scores.length;
  // With four outputs, index 0 is the single-mask token and 1..3 the three ambiguity masks (as in Meta's predictor).
  const candidates = k === 1 ? [0] : multimask ? [1, 2, 3] : [0];
  let best = candidates[0];
  for (const c of candidates) if (scores[c] > scores[best]) best = c;

  const postStarted = performance.now();
  const wanted = allMasks ? candidates : [best];
  const sameSize = outSize[0] === imageSize[0] && outSize[1] === imageSize[1];
  const masks = {};
  for (const c of wanted) {
    if (usesOrigImSize && outputs.masks && sameSize) {
      const [, , h, w] = outputs.masks.dims;
      const plane = h * w;
      masks[c] = threshold(outputs.masks.data.subarray(c * plane, (c + 1) * plane));
    } else {
      masks[c] = maskFromLowRes(lowResPlane(lowRes, c), inputSize, outSize);
    }
  }
  for (const name of Object.keys(outputs)) outputs[name].dispose?.();
  const transfer = [lowRes.buffer, ...Object.values(masks).map((m) => m.buffer)];
  return [
    {
      type: "result", id, scores, lowRes, candidates, best, masks, outSize,
      decodeMs, postMs: performance.now() - postStarted, wasmMemoryBytes: decoderMemoryUse()?.bytes ?? null,
    },
    transfer,
  ];
}

function upsample({ id, lowRes, outSize }) {
  const mask = maskFromLowRes(lowRes, inputSize, outSize);
  return [{ type: "mask", id, mask, outSize }, [mask.buffer]];
}

const handlers = { init, embedding: setEmbedding, decode, upsample };

// Messages are handled one at a time, in order: the session is not re-entrant.
let queue = Promise.resolve();
self.onmessage = (event) => {
  const message = event.data;
  queue = queue.then(async () => {
    try {
      const handler = handlers[message.type];
      if (!handler) throw new Error(`Unknown message type "${message.type}".`);
      const answer = await handler(message);
      const [reply, transfer] = Array.isArray(answer) ? answer : [answer, []];
      postMessage({ ...reply, id: message.id }, transfer);
    } catch (error) {
      postMessage({ type: "error", id: message.id, stage: message.type, message: error.message || String(error) });
    }
  });
};
