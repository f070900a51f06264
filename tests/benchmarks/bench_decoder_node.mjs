// Hover-sized decodes of one or more lowres decoder files in one Node process, interleaved, as the browser's
// worker runs them: onnxruntime-web's own build, the page's session options, and the first block's per-image
// outputs computed by a first run on the image and fed back after it (web/js/decoder/per-image.js).
//
//   node tests/benchmarks/bench_decoder_node.mjs [--runs 40] [--threads 2] [--tokens 43x64] A.onnx [B.onnx ...]
//
// For comparing graph edits of the default file. On a shared 2-core machine a file's run moves by 25 % and more
// from one process to the next (the cores' placement), so versions are compared within one process: each
// round runs every file once, in a rotating order, after a pause that lets the previous run's threads stop
// spinning. --tokens is the upscaled extent (valid_tokens): 43x64 is bench_hover.py's 800 x 534 photo.
//
// Prints JSON: {files, ms: each file's median session.run, ratio: the first file's median over each one's
// (> 1: faster than the first), maxDiff: each file's largest difference from the first file's low-res logits}.
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const web = new URL("../../web/", import.meta.url);
const { decoderSessionOptions } = await import(new URL("js/decoder/session-options.js", web));
const { PerImageOutputs } = await import(new URL("js/decoder/per-image.js", web));
const ortDir = new URL("node_modules/onnxruntime-web/dist/", web);

function fail(message) {
  console.error(`error: ${message}`);
  process.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      runs: { type: "string", default: "40" },
      threads: { type: "string", default: "2" },
      tokens: { type: "string", default: "43x64" },
    },
  });
} catch (error) {
  fail(error.message);
}
const { values, positionals: files } = parsed;
const runs = Number(values.runs);
const threads = Number(values.threads);
const tokens = values.tokens.split("x").map(Number);
if (!files.length) fail("give at least one decoder file");
if (!(Number.isInteger(runs) && runs > 0)) fail(`--runs must be a positive integer, not ${values.runs}`);
if (!(Number.isInteger(threads) && threads > 0)) fail(`--threads must be a positive integer, not ${values.threads}`);
if (tokens.length !== 2 || !tokens.every((t) => Number.isInteger(t) && t >= 1 && t <= 64)) {
  fail(`--tokens must be ROWSxCOLUMNS of the 64 x 64 grid, not ${values.tokens}`);
}

const ort = await import(new URL("ort.wasm.min.mjs", ortDir));
ort.env.wasm.numThreads = threads;
ort.env.wasm.wasmPaths = fileURLToPath(ortDir);

const tensor = (type, data, dims) => new ort.Tensor(type, data, dims);
// Fixed pseudo-random values (the timing does not depend on them; the comparison of outputs needs them equal).
const embedding = tensor("float32", Float32Array.from({ length: 256 * 64 * 64 }, (_, i) => Math.sin(i * 12.9898) * 0.5), [1, 256, 64, 64]);
const shared = {
  image_embeddings: embedding,
  point_labels: tensor("float32", Float32Array.of(1, -1), [1, 2]), // a click and the padding point
  mask_input: tensor("float32", new Float32Array(256 * 256), [1, 1, 256, 256]),
  has_mask_input: tensor("float32", Float32Array.of(0), [1]),
  valid_tokens: tensor("int64", BigInt64Array.of(BigInt(tokens[0]), BigInt(tokens[1])), [2]),
};
// The i-th hover's point, in the 1024 frame, inside the upscaled extent.
const click = (i) => tensor("float32", Float32Array.of(16 + ((i * 37) % 60) * 16, 16 + ((i * 61) % Math.max(1, tokens[0] - 2)) * 16, 0, 0), [1, 2, 2]);

const decoders = [];
for (const file of files) {
  let session;
  try {
    session = await ort.InferenceSession.create(readFileSync(file), decoderSessionOptions("wasm"));
  } catch (error) {
    fail(`${file}: ${error.message}`);
  }
  const missing = session.inputNames.filter((name) => !(name in shared) && name !== "point_coords" && !name.startsWith("cached_"));
  if (missing.length) fail(`${file} is not a lowres decoder: it also takes ${missing.join(", ")}`);
  decoders.push({ session, perImage: new PerImageOutputs(ort, session), times: [], logits: null });
}

async function decode(decoder, i) {
  const { session, perImage } = decoder;
  const plan = perImage.plan(true);
  const feeds = Object.fromEntries(session.inputNames.filter((name) => name in shared).map((name) => [name, shared[name]]));
  const started = performance.now();
  const outputs = await session.run({ ...feeds, point_coords: click(i), ...plan.feeds }, plan.fetches);
  const ms = performance.now() - started;
  if (plan.computes) perImage.kept = perImage.take(outputs);
  decoder.logits = outputs.low_res_masks.data;
  return ms;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
for (const decoder of decoders) await decode(decoder, 0); // the image's first run: its per-image outputs
const warmUp = 3;
const maxDiff = decoders.map(() => 0);
for (let i = -warmUp; i < runs; i++) {
  for (let j = 0; j < decoders.length; j++) {
    const decoder = decoders[(i + warmUp + j) % decoders.length];
    await sleep(20);
    const ms = await decode(decoder, i + warmUp);
    if (i >= 0) decoder.times.push(ms);
  }
  const first = decoders[0].logits;
  decoders.forEach((decoder, k) => {
    if (decoder.logits.length !== first.length) fail(`${files[k]} gives ${decoder.logits.length} logits, ${files[0]} ${first.length}`);
    for (let j = 0; j < first.length; j++) maxDiff[k] = Math.max(maxDiff[k], Math.abs(decoder.logits[j] - first[j]));
  });
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
};
const ms = decoders.map((decoder) => median(decoder.times));
console.log(JSON.stringify({
  files,
  ms: ms.map((m) => Number(m.toFixed(2))),
  ratio: ms.map((m) => Number((ms[0] / m).toFixed(3))),
  maxDiff,
}));
process.exit(0); // onnxruntime-web's threads would keep the process alive
