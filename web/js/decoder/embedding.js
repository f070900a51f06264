// Reads the embedding wire format of backend/services/codec.py (docs/ARCHITECTURE.md):
// a 16-byte little-endian header ("SAME", version, dtype, C, H, W), then float32 / float16 / int8 values.

const MAGIC = "SAME";
const HEADER_BYTES = 16;
export const DTYPE_NAMES = { 0: "float32", 1: "float16", 2: "int8" };

let halfTable = null;

/** Float32 values of every IEEE half-precision bit pattern (built once, 256 KiB). */
function halfToFloatTable() {
  if (halfTable) return halfTable;
  halfTable = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const fraction = h & 0x3ff;
    let value;
    if (exponent === 0) value = fraction * 2 ** -24;
    else if (exponent === 31) value = fraction ? NaN : Infinity;
    else value = (1 + fraction / 1024) * 2 ** (exponent - 15);
    halfTable[h] = sign * value;
  }
  return halfTable;
}

export class EmbeddingFormatError extends Error {}

/**
 * Decodes one embedding.
 * @param {ArrayBuffer} buffer the HTTP body of GET /api/embeddings/<id>
 * @returns {{data: Float32Array, dims: number[], dtype: string}} data is C*H*W floats in C,H,W order;
 *   dims is [1, C, H, W] as the decoder's image_embeddings input expects.
 */
export function decodeEmbedding(buffer) {
  if (!(buffer instanceof ArrayBuffer) || buffer.byteLength < HEADER_BYTES) {
    throw new EmbeddingFormatError("The embedding is too short to hold its header.");
  }
  const view = new DataView(buffer);
  const magic = String.fromCharCode(...new Uint8Array(buffer, 0, 4));
  if (magic !== MAGIC) throw new EmbeddingFormatError(`The embedding does not start with "${MAGIC}".`);
  const version = view.getUint8(4);
  if (version !== 1) throw new EmbeddingFormatError(`Embedding format version ${version} is not supported.`);
  const dtypeCode = view.getUint8(5);
  const channels = view.getUint16(8, true);
  const height = view.getUint16(10, true);
  const width = view.getUint16(12, true);
  const count = channels * height * width;
  const plane = height * width;
  const data = new Float32Array(count);

  const expect = (bytes) => {
    if (buffer.byteLength !== HEADER_BYTES + bytes) {
      throw new EmbeddingFormatError(
        `The embedding has ${buffer.byteLength} bytes; ${HEADER_BYTES + bytes} were expected.`);
    }
  };
  if (dtypeCode === 0) {
    expect(count * 4);
    // The payload starts at byte 16, so a Float32Array view is aligned; copying detaches it from the buffer.
    data.set(new Float32Array(buffer, HEADER_BYTES, count));
  } else if (dtypeCode === 1) {
    expect(count * 2);
    const table = halfToFloatTable();
    const halves = new Uint16Array(buffer, HEADER_BYTES, count);
    for (let i = 0; i < count; i++) data[i] = table[halves[i]];
  } else if (dtypeCode === 2) {
    expect(channels * 4 + count);
    const scales = new Float32Array(buffer, HEADER_BYTES, channels);
    const values = new Int8Array(buffer, HEADER_BYTES + channels * 4, count);
    for (let c = 0; c < channels; c++) {
      const scale = scales[c];
      const offset = c * plane;
      for (let i = 0; i < plane; i++) data[offset + i] = values[offset + i] * scale;
    }
  } else {
    throw new EmbeddingFormatError(`Unknown embedding dtype code ${dtypeCode}.`);
  }
  return { data, dims: [1, channels, height, width], dtype: DTYPE_NAMES[dtypeCode] };
}
