// onnxruntime-web's WebAssembly memory, sized to the decoder instead of its build's 4 GiB maximum.
//
// The WASM glue of onnxruntime-web (one build for one thread and for many) creates a shared memory of
// 16 MiB that may grow to 65536 pages (4 GiB). A shared memory cannot move when it grows, so engines reserve
// its whole maximum when it is created: 4 GiB of address space for one decoder, more than a phone's browser
// gives a tab (SAM demos die there with "out of memory"). The glue offers no setting for it, so the worker
// lowers the maximum of the shared memory it asks for before onnxruntime starts; growth up to that maximum
// works as before (the glue grows the memory and re-reads its views), so nothing is reserved up front.

const PAGE_BYTES = 65536;

/** The decoder's memory once onnxruntime created it (null before). */
let decoderMemory = null;

/** The most prompts one run decodes together (decode-many splits larger groups): each adds its own image tokens
 * and upscaling to the run's arena, and the memory below is sized for this many. */
export const MAX_PROMPTS_PER_RUN = 4;

/**
 * The most WebAssembly memory a decoder of `modelBytes` needs: its weights twice (the model bytes are copied
 * in, then unpacked into initializers), the arena of one decode at the largest output (four 1024x1024 float
 * mask planes with their resize buffers), thread stacks, and room for the glue to grow in steps; plus 48 MiB
 * for each further prompt of a batched run (its tokens, attention and upscaling planes).
 */
export function decoderMemoryBytes(modelBytes) {
  const MIB = 1024 * 1024;
  const bytes = 2 * modelBytes + 192 * MIB + (MAX_PROMPTS_PER_RUN - 1) * 48 * MIB;
  return Math.ceil(bytes / PAGE_BYTES) * PAGE_BYTES;
}

/**
 * Caps every shared WebAssembly.Memory created in this worker from now on at `maximumBytes` (never below
 * what it asks for initially). Non-shared memories (onnxruntime's fallback buffers) are left alone.
 */
export function capSharedMemory(maximumBytes) {
  const Original = WebAssembly.Memory;
  const maximumPages = Math.ceil(maximumBytes / PAGE_BYTES);
  function CappedMemory(descriptor) {
    if (!descriptor?.shared || !(descriptor.maximum > maximumPages)) return new Original(descriptor);
    const memory = new Original({ ...descriptor, maximum: Math.max(maximumPages, descriptor.initial) });
    if (descriptor.initial > 0) decoderMemory = { memory, maximumBytes: Math.max(maximumPages, descriptor.initial) * PAGE_BYTES };
    return memory;
  }
  CappedMemory.prototype = Original.prototype; // `instanceof WebAssembly.Memory` still holds
  WebAssembly.Memory = CappedMemory;
}

/** {bytes: the decoder's memory now, maximumBytes: how far it may grow}, or null before it exists. */
export function decoderMemoryUse() {
  if (!decoderMemory) return null;
  return { bytes: decoderMemory.memory.buffer.byteLength, maximumBytes: decoderMemory.maximumBytes };
}
