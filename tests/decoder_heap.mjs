// The WebAssembly memory onnxruntime-web holds after decodes of a decoder file, as the browser's worker runs them
// (the same build, session options and memory cap), on Node. Used by tests/test_quantized_decoder.py.
//
//   node tests/decoder_heap.mjs DECODER.onnx
//
// Prints JSON: {created, decoded} in bytes, after the session's creation and after the page's decodes: on every
// token of the 64 x 64 grid and on fewer, with the image's per-image outputs fed back, and with a mask prompt (a
// click's logits are fed back: the page's largest decode).
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const web = new URL("../web/", import.meta.url);
const { capSharedMemory, decoderMemoryBytes, decoderMemoryUse } = await import(new URL("js/decoder/wasm-memory.js", web));
const { decoderSessionOptions } = await import(new URL("js/decoder/session-options.js", web));
const { PerImageOutputs } = await import(new URL("js/decoder/per-image.js", web));
const ortDir = new URL("node_modules/onnxruntime-web/dist/", web);
const ort = await import(new URL("ort.wasm.min.mjs", ortDir));
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = fileURLToPath(ortDir);

const model = readFileSync(process.argv[2]);
capSharedMemory(decoderMemoryBytes(model.byteLength));
const session = await ort.InferenceSession.create(model, decoderSessionOptions("wasm"));
const created = decoderMemoryUse().bytes;

const tensor = (type, data, dims) => new ort.Tensor(type, data, dims);
const random = (n) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);
const embedding = tensor("float32", random(256 * 64 * 64), [1, 256, 64, 64]);
const maskInput = tensor("float32", random(256 * 256), [1, 1, 256, 256]);
const perImage = new PerImageOutputs(ort, session);

// As web/js/decoder/decoder-worker.js runs them: the first run on the image keeps the per-image outputs, the
// next runs without a mask prompt feed them back and do not fetch them.
async function decode(hasMask, rows, columns) {
  const feeds = {
    image_embeddings: embedding,
    point_coords: tensor("float32", Float32Array.of(512, 400, 0, 0), [1, 2, 2]),
    point_labels: tensor("float32", Float32Array.of(1, -1), [1, 2]),
    mask_input: maskInput,
    has_mask_input: tensor("float32", Float32Array.of(hasMask), [1]),
    valid_tokens: tensor("int64", BigInt64Array.of(BigInt(rows), BigInt(columns)), [2]),
  };
  const plan = perImage.plan(!hasMask);
  const outputs = await session.run({ ...feeds, ...plan.feeds }, plan.fetches);
  if (plan.computes) perImage.kept = perImage.take(outputs);
}

await decode(0, 64, 64); // the page's warm-up
for (let i = 0; i < 3; i++) await decode(0, 48, 64); // hovers on a 4:3 photo
await decode(1, 64, 64); // a click's logits fed back
for (let i = 0; i < 3; i++) await decode(0, 64, 64);
console.log(JSON.stringify({ created, decoded: decoderMemoryUse().bytes }));
