// The overlay's pixels and the painting of a binary mask into them: fill inside, a stronger edge on the outline.
// Painting runs in a small WebAssembly SIMD kernel (mask-paint.wat), 16 pixels a step: a hover's preview is
// painted on the main thread between the decode and the next frame, and the per-pixel JavaScript loop took
// 1.5 ms of it at 800 x 534 in Chromium (0.2 ms in WebAssembly; docs/benchmarks.md, "The overlay's paint and
// the client's mask in WebAssembly").
// The pixels live in the kernel's memory, so the canvas reads them with no copy; engines without WebAssembly
// SIMD get the same pixels from paintMaskJs.

import { MASK_PAINT_WASM } from "./mask-paint-wasm.js";
import { reserveBytes, wasmKernel } from "./wasm-kernel.js";

/**
 * Paints mask (H * W, nonzero: set) into target (H * W packed RGBA): `fill` on set pixels, `edge` on set pixels on
 * the image's border or next to an unset one (4-neighbours); unset pixels keep their value.
 */
export function paintMaskJs(target, mask, W, H, fill, edge) {
  for (let y = 0; y < H; y++) {
    const row = y * W;
    for (let x = 0; x < W; x++) {
      const i = row + x;
      if (!mask[i]) continue;
      const onEdge = x === 0 || x === W - 1 || y === 0 || y === H - 1 ||
        !mask[i - 1] || !mask[i + 1] || !mask[i - W] || !mask[i + W];
      target[i] = onEdge ? edge : fill;
    }
  }
}

/** The overlay's frame (what the canvas shows) and its base layer (kept objects), both H x W packed RGBA. */
export class OverlayPixels {
  /** @param {boolean} useKernel false: paint in JavaScript (for comparisons) */
  constructor(useKernel = true) {
    this.kernel = useKernel ? wasmKernel(MASK_PAINT_WASM) : null;
    this.size = null;
  }

  /** Sizes the layers to [H, W]: {frame: ImageData, pixels: Uint32Array (the frame's), base: Uint32Array}. */
  resize([H, W]) {
    const count = H * W;
    this.size = [H, W];
    if (!this.kernel) {
      const frame = new ImageData(W, H);
      return { frame, pixels: new Uint32Array(frame.data.buffer), base: new Uint32Array(count) };
    }
    // [frame pixels | base pixels | mask], the frame first (ImageData over the memory from offset 0).
    const buffer = reserveBytes(this.kernel.memory, count * 9);
    const frameBytes = new Uint8ClampedArray(buffer, 0, count * 4);
    frameBytes.fill(0);
    this.maskBytes = new Uint8Array(buffer, count * 8, count);
    return {
      frame: new ImageData(frameBytes, W, H),
      pixels: new Uint32Array(buffer, 0, count),
      base: new Uint32Array(buffer, count * 4, count).fill(0),
    };
  }

  /** Paints mask (H * W bytes) into one of the layers (`pixels` or `base`); fill, edge: packed RGBA. */
  paint(target, mask, fill, edge) {
    const [H, W] = this.size;
    if (!this.kernel) {
      paintMaskJs(target, mask, W, H, fill, edge);
      return;
    }
    this.maskBytes.set(mask);
    this.kernel.paint(target.byteOffset, this.maskBytes.byteOffset, W, H, fill, edge);
  }
}
