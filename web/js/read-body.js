// Reads a fetch Response body chunk by chunk, so downloads (embedding, decoder model) can show progress.

/**
 * @param {Response} response
 * @param {(loaded: number) => void} onChunk called with the bytes received so far
 * @returns {Promise<Uint8Array>} the whole body
 */
export async function readBody(response, onChunk) {
  if (!response.body) return new Uint8Array(await response.arrayBuffer());
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.byteLength;
    onChunk(loaded);
  }
  const bytes = new Uint8Array(loaded);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}
