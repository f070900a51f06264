// Reads the embedding wire format of backend/services/codec.py (docs/ARCHITECTURE.md).
// Version 1 (SAM 1): a 16-byte little-endian header ("SAME", version, dtype, C, H, W), then float32 / float16 /
// int8 values. Version 2 (SAM 2): a 16-byte bundle header ("SAME", 2, tensor count), then one such record per
// tensor (image_embed, high_res_feats_0, high_res_feats_1), each with its own dtype, int4 among them, and int8
// sent as differences along each row (dtype 4).

const MAGIC = "SAME";
const HEADER_BYTES = 16;
export const DTYPE_NAMES = { 0: "float32", 1: "float16", 2: "int8", 3: "int4", 4: "int8" };
// The tensors of a version-2 bundle, in order, named as the SAM 2 decoders' inputs.
export const SAM2_TENSORS = ["image_embed", "high_res_feats_0", "high_res_feats_1"];

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

function magicAt(buffer, offset) {
  return String.fromCharCode(...new Uint8Array(buffer, offset, 4));
}

/** Payload bytes of a record of `count` values in `channels` channels with dtype code `dtypeCode`. */
function payloadBytes(dtypeCode, channels, count) {
  return [count * 4, count * 2, channels * 4 + count, channels * 4 + Math.ceil(count / 2), channels * 4 + count][dtypeCode];
}

/**
 * One tensor record at `offset`: its header (whose version byte must be `version`) and payload.
 * @param {Float32Array|null} reuse written over when it has the record's length (every value is written), so
 *   a new image's embedding leaves no 4 MB array behind for the garbage collector (docs/webkit.md)
 * @returns {{data: Float32Array, dims: number[], dtype: string, end: number}} end: the offset after it
 */
function decodeRecord(buffer, offset, version, exact, reuse = null) {
  if (buffer.byteLength < offset + HEADER_BYTES) {
    throw new EmbeddingFormatError("The embedding is too short to hold its header.");
  }
  const view = new DataView(buffer, offset);
  if (magicAt(buffer, offset) !== MAGIC) throw new EmbeddingFormatError(`The embedding does not start with "${MAGIC}".`);
  if (view.getUint8(4) !== version) {
    throw new EmbeddingFormatError(`Embedding format version ${view.getUint8(4)} is not supported.`);
  }
  const dtypeCode = view.getUint8(5);
  const channels = view.getUint16(8, true);
  const height = view.getUint16(10, true);
  const width = view.getUint16(12, true);
  const count = channels * height * width;
  const plane = height * width;
  if (!(dtypeCode in DTYPE_NAMES) || (version === 1 && dtypeCode > 2)) {
    throw new EmbeddingFormatError(`Unknown embedding dtype code ${dtypeCode}.`);
  }
  const start = offset + HEADER_BYTES;
  const end = start + payloadBytes(dtypeCode, channels, count);
  if (exact ? buffer.byteLength !== end : buffer.byteLength < end) {
    throw new EmbeddingFormatError(`The embedding has ${buffer.byteLength} bytes; ${end} were expected.`);
  }
  const data = reuse?.length === count ? reuse : new Float32Array(count);
  if (dtypeCode === 0) {
    // Copied through bytes: a record inside a bundle need not start 4-byte aligned.
    new Uint8Array(data.buffer, data.byteOffset, count * 4).set(new Uint8Array(buffer, start, count * 4));
  } else if (dtypeCode === 1) {
    const table = halfToFloatTable();
    // A typed-array view needs 2-byte alignment (always so for version 1, whose payload starts at byte 16).
    const halves = start % 2 === 0 ? new Uint16Array(buffer, start, count) : new Uint16Array(buffer.slice(start, start + 2 * count));
    for (let i = 0; i < count; i++) data[i] = table[halves[i]];
  } else {
    const scales = new Float32Array(channels);
    new Uint8Array(scales.buffer).set(new Uint8Array(buffer, start, channels * 4));
    const valuesStart = start + channels * 4;
    if (dtypeCode === 2) {
      const values = new Int8Array(buffer, valuesStart, count);
      for (let c = 0; c < channels; c++) {
        const scale = scales[c];
        const o = c * plane;
        for (let i = 0; i < plane; i++) data[o + i] = values[o + i] * scale;
      }
    } else if (dtypeCode === 4) {
      // int8 differences along each row: q[x] = q[x - 1] + d[x] wrapped to int8, q[-1] = 0.
      const deltas = new Int8Array(buffer, valuesStart, count);
      for (let c = 0; c < channels; c++) {
        const scale = scales[c];
        for (let row = c * plane; row < (c + 1) * plane; row += width) {
          let q = 0;
          for (let i = row; i < row + width; i++) {
            q = ((q + deltas[i]) << 24) >> 24;
            data[i] = q * scale;
          }
        }
      }
    } else {
      // int4: two signed values a byte, the even index in the low nibble.
      const packed = new Uint8Array(buffer, valuesStart, Math.ceil(count / 2));
      for (let c = 0; c < channels; c++) {
        const scale = scales[c];
        const o = c * plane;
        for (let i = o; i < o + plane; i++) {
          const nibble = i & 1 ? packed[i >> 1] >> 4 : packed[i >> 1] & 0x0f;
          data[i] = (nibble > 7 ? nibble - 16 : nibble) * scale;
        }
      }
    }
  }
  return { data, dims: [1, channels, height, width], dtype: DTYPE_NAMES[dtypeCode], end };
}

/**
 * Decodes one SAM 1 embedding (version 1).
 * @param {ArrayBuffer} buffer the HTTP body of GET /api/embeddings/<id>
 * @param {Float32Array|null} reuse an array to write the values into when it has their count
 * @returns {{data: Float32Array, dims: number[], dtype: string}} data is C*H*W floats in C,H,W order;
 *   dims is [1, C, H, W] as the decoder's image_embeddings input expects.
 */
export function decodeEmbedding(buffer, reuse = null) {
  if (!(buffer instanceof ArrayBuffer)) throw new EmbeddingFormatError("The embedding is too short to hold its header.");
  const { data, dims, dtype } = decodeRecord(buffer, 0, 1, true, reuse);
  return { data, dims, dtype };
}

/**
 * Decodes a version-1 embedding or a version-2 SAM 2 bundle into the decoder's image inputs.
 * @param {Object<string, Float32Array>} reuse arrays by input name to write over where the lengths match (the
 *   previous image's, which the caller no longer reads)
 * @returns {{tensors: Object<string, {data: Float32Array, dims: number[]}>, dtype: string, sam2: boolean}}
 *   tensors by decoder input name (image_embeddings, or SAM2_TENSORS); dtype e.g. "int8" or "int8/int4/int8"
 */
export function decodeFeatures(buffer, reuse = {}) {
  if (!(buffer instanceof ArrayBuffer) || buffer.byteLength < HEADER_BYTES) {
    throw new EmbeddingFormatError("The embedding is too short to hold its header.");
  }
  const version = new DataView(buffer).getUint8(4);
  if (version !== 2) {
    const { data, dims, dtype } = decodeEmbedding(buffer, reuse.image_embeddings);
    return { tensors: { image_embeddings: { data, dims } }, dtype, sam2: false };
  }
  if (magicAt(buffer, 0) !== MAGIC) throw new EmbeddingFormatError(`The embedding does not start with "${MAGIC}".`);
  const count = new DataView(buffer).getUint8(5);
  if (count !== SAM2_TENSORS.length) {
    throw new EmbeddingFormatError(`A SAM 2 embedding holds ${SAM2_TENSORS.length} tensors, not ${count}.`);
  }
  const tensors = {};
  const dtypes = [];
  let offset = HEADER_BYTES;
  SAM2_TENSORS.forEach((name, i) => {
    const record = decodeRecord(buffer, offset, 2, i === SAM2_TENSORS.length - 1, reuse[name]);
    tensors[name] = { data: record.data, dims: record.dims };
    dtypes.push(record.dtype);
    offset = record.end;
  });
  return { tensors, dtype: dtypes.join("/"), sam2: true };
}
