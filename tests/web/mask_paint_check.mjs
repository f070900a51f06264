// web/js/mask-paint.js under Node: the WebAssembly kernel paints exactly the pixels of paintMaskJs.
//   node tests/web/mask_paint_check.mjs   prints {"kernel": bool, "mismatches": [...], "timings": {...}}
// (tests/web/wasm_kernels.mjs checks that its binary is what mask-paint.wat compiles to.)

const js = new URL("../../web/js/", import.meta.url);

// The browser's ImageData, as far as OverlayPixels uses it.
globalThis.ImageData = class {
  constructor(data, width, height) {
    if (typeof data === "number") [data, width, height] = [new Uint8ClampedArray(data * width * 4), data, width];
    Object.assign(this, { data, width, height });
  }
};
const { OverlayPixels, paintMaskJs } = await import(new URL("mask-paint.js", js));

let seed = 7;
const random = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
const fill = 0x59ff8040, edge = 0xccff8040 >>> 0;

function makeMask([H, W], kind) {
  const mask = new Uint8Array(H * W);
  for (let i = 0; i < mask.length; i++) {
    const x = i % W, y = Math.floor(i / W);
    if (kind === "disc") mask[i] = (x - W / 2) ** 2 + (y - H / 2) ** 2 < (Math.min(H, W) / 3) ** 2 ? 1 : 0;
    else if (kind === "full") mask[i] = 1;
    else mask[i] = random() < kind ? (random() < 0.5 ? 1 : 255) : 0; // any nonzero byte is set
  }
  return mask;
}

const painter = new OverlayPixels();
const mismatches = [];
// Sizes around the kernel's 16-pixel steps and its scalar edges, then growing and shrinking the memory.
const sizes = [[1, 1], [2, 3], [5, 17], [3, 18], [4, 19], [7, 33], [40, 35], [534, 800], [96, 96], [1024, 1024], [3, 50]];
for (const size of sizes) {
  for (const kind of [0, 0.3, 0.83, "disc", "full"]) {
    const layers = painter.resize(size);
    const background = Uint32Array.from({ length: size[0] * size[1] }, () => (random() * 2 ** 32) >>> 0);
    layers.pixels.set(background);
    const mask = makeMask(size, kind);
    painter.paint(layers.pixels, mask, fill, edge);
    const expected = Uint32Array.from(background);
    paintMaskJs(expected, mask, size[1], size[0], fill, edge);
    const wrong = expected.findIndex((v, i) => v !== layers.pixels[i]);
    if (wrong >= 0) mismatches.push({ size, kind, pixel: wrong });
    // The base layer is painted in place too, and the frame is what the ImageData shows.
    layers.base.fill(0);
    painter.paint(layers.base, mask, fill, edge);
    const base = new Uint32Array(size[0] * size[1]);
    paintMaskJs(base, mask, size[1], size[0], fill, edge);
    if (base.some((v, i) => v !== layers.base[i])) mismatches.push({ size, kind, layer: "base" });
    if (new Uint32Array(layers.frame.data.buffer, layers.frame.data.byteOffset, 4)[0] !== layers.pixels[0]) {
      mismatches.push({ size, kind, layer: "frame" });
    }
  }
}

// Timings at the hover benchmark's photo size: a speckled mask (random weights) and a smooth one.
const timings = {};
const size = [534, 800];
const layers = painter.resize(size);
for (const kind of [0.83, "disc"]) {
  const mask = makeMask(size, kind);
  const target = new Uint32Array(size[0] * size[1]);
  const js = [], wasm = [];
  for (let round = 0; round < 200; round++) {
    let started = performance.now();
    paintMaskJs(target, mask, size[1], size[0], fill, edge);
    js.push(performance.now() - started);
    started = performance.now();
    painter.paint(layers.pixels, mask, fill, edge);
    wasm.push(performance.now() - started);
  }
  const median = (v) => v.slice(50).sort((a, b) => a - b)[75];
  timings[kind === "disc" ? "smooth" : "speckled"] = { jsMs: median(js), wasmMs: median(wasm) };
}
console.log(JSON.stringify({ kernel: Boolean(painter.kernel), mismatches, timings }));
