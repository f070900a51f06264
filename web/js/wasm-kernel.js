// Instantiates one of the client's small WebAssembly kernels (mask-paint.wat, mask-threshold.wat) from its
// base64 binary, synchronously (each is under a kilobyte, within the main thread's limit for compiling at once).

/** The kernel's exports, or null where it cannot run: no WebAssembly SIMD, or a host page's CSP forbids compiling. */
export function wasmKernel(base64) {
  try {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    if (!WebAssembly.validate(bytes)) return null;
    return new WebAssembly.Instance(new WebAssembly.Module(bytes), {}).exports;
  } catch {
    return null;
  }
}

/** Grows the kernel's memory to at least `bytes` (views of it made before are detached by growing). */
export function reserveBytes(memory, bytes) {
  const PAGE_BYTES = 65536;
  if (memory.buffer.byteLength < bytes) memory.grow(Math.ceil((bytes - memory.buffer.byteLength) / PAGE_BYTES));
  return memory.buffer;
}
