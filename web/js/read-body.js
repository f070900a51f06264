// Reads a fetch Response body chunk by chunk, so downloads (embedding, decoder model) can show progress and
// keep what arrived when a transfer fails (resumable-download.js).

/**
 * Appends the body's chunks to `chunks` as they arrive (those received stay there when the transfer fails).
 * @param {(bytes: number) => void} onChunk called with each chunk's size
 */
export async function readChunks(response, chunks, onChunk) {
  if (!response.body) {
    const bytes = new Uint8Array(await response.arrayBuffer());
    chunks.push(bytes);
    onChunk(bytes.byteLength);
    return;
  }
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    chunks.push(value);
    onChunk(value.byteLength);
  }
}

/** The chunks, `length` bytes in all, as one Uint8Array (the chunk itself when there is one). */
export function joinChunks(chunks, length) {
  if (chunks.length === 1 && chunks[0].byteLength === length) return chunks[0];
  const bytes = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}
