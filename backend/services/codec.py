"""The embedding wire format (docs/ARCHITECTURE.md), read by web/js/decoder/embedding.js.

Little-endian. A 16-byte header: magic ``SAME``, u8 version (1), u8 dtype (0 float32, 1 float16, 2 int8),
u16 reserved, u16 C, u16 H, u16 W, u16 reserved. Then the payload in C,H,W order: float32 or float16 values,
or for int8 C float32 per-channel scales followed by C*H*W int8 values, where value = q * scale[c] and
scale = max|x_c| / 127 (symmetric).
"""

from __future__ import annotations

import struct

import numpy as np

MAGIC = b"SAME"
VERSION = 1
HEADER = struct.Struct("<4sBBHHHHH")
HEADER_BYTES = HEADER.size  # 16

# Wire names (the `format` query parameter) and their dtype codes.
FORMATS = {"f32": 0, "f16": 1, "int8": 2}
FORMAT_NAMES = {code: name for name, code in FORMATS.items()}
# Value types as web/js/decoder/embedding.js names them.
DTYPES = {"f32": "float32", "f16": "float16", "int8": "int8"}
# int8 is half of f16's bytes (1,049,616 B for vit's 256 x 64 x 64) and keeps the decoder's masks (mean IoU
# >= 0.99 against float32; tests/test_quantized_decoder.py).
DEFAULT_FORMAT = "int8"
_FLOAT16_MAX = float(np.finfo(np.float16).max)


class CodecError(ValueError):
    """The bytes are not a valid embedding in the wire format, or the format name is unknown."""


def encoded_size(shape: tuple[int, int, int], fmt: str) -> int:
    """Bytes on the wire (header included) for an embedding of ``shape`` (C, H, W) in ``fmt``."""
    channels, height, width = shape
    count = channels * height * width
    if fmt == "f32":
        return HEADER_BYTES + 4 * count
    if fmt == "f16":
        return HEADER_BYTES + 2 * count
    if fmt == "int8":
        return HEADER_BYTES + 4 * channels + count
    raise CodecError(f"unknown embedding format {fmt!r}; use one of {', '.join(FORMATS)}")


def encode_embedding(embedding: np.ndarray, fmt: str = DEFAULT_FORMAT) -> bytes:
    """Serialises a float embedding of shape [C, H, W] (or [1, C, H, W]) as ``fmt``."""
    if fmt not in FORMATS:
        raise CodecError(f"unknown embedding format {fmt!r}; use one of {', '.join(FORMATS)}")
    array = np.asarray(embedding, dtype=np.float32)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise CodecError(f"an embedding has shape [C, H, W], not {list(array.shape)}")
    if not np.isfinite(array).all():
        raise CodecError("the embedding holds NaN or infinite values")
    channels, height, width = array.shape
    header = HEADER.pack(MAGIC, VERSION, FORMATS[fmt], 0, channels, height, width, 0)
    if fmt == "f32":
        payload = array.astype("<f4", copy=False).tobytes()
    elif fmt == "f16":
        payload = np.clip(array, -_FLOAT16_MAX, _FLOAT16_MAX).astype("<f2").tobytes()
    else:
        scales, quantized = quantize_int8(array)
        payload = scales.astype("<f4").tobytes() + quantized.tobytes()
    return header + payload


def quantize_int8(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8: returns scales float32 [C] and values int8 [C, H, W]."""
    channels = array.shape[0]
    peaks = np.abs(array.reshape(channels, -1)).max(axis=1)
    scales = (peaks / 127.0).astype(np.float32)
    # An all-zero channel keeps scale 0; dividing by 1 there keeps q = 0 without a warning.
    divisors = np.where(scales > 0, scales, 1.0).astype(np.float32)
    quantized = np.rint(array / divisors[:, None, None])
    return scales, np.clip(quantized, -127, 127).astype(np.int8)


def parse_header(data: bytes) -> tuple[str, tuple[int, int, int]]:
    """Returns (format name, (C, H, W)) from the first 16 bytes."""
    if len(data) < HEADER_BYTES:
        raise CodecError(f"an embedding starts with a {HEADER_BYTES}-byte header; got {len(data)} bytes")
    magic, version, dtype, _, channels, height, width, _ = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CodecError(f"bad magic {magic!r}; expected {MAGIC!r}")
    if version != VERSION:
        raise CodecError(f"unsupported embedding format version {version}; this server reads {VERSION}")
    if dtype not in FORMAT_NAMES:
        raise CodecError(f"unknown dtype code {dtype}")
    return FORMAT_NAMES[dtype], (channels, height, width)


def decode_embedding(data: bytes) -> np.ndarray:
    """Parses wire bytes back into a float32 array [C, H, W]."""
    fmt, shape = parse_header(data)
    if len(data) != encoded_size(shape, fmt):
        raise CodecError(
            f"{fmt} embedding of shape {list(shape)} needs {encoded_size(shape, fmt)} bytes, got {len(data)}"
        )
    channels = shape[0]
    body = memoryview(data)[HEADER_BYTES:]
    if fmt == "f32":
        return np.frombuffer(body, dtype="<f4").reshape(shape).astype(np.float32)
    if fmt == "f16":
        return np.frombuffer(body, dtype="<f2").reshape(shape).astype(np.float32)
    scales = np.frombuffer(body[: 4 * channels], dtype="<f4").astype(np.float32)
    values = np.frombuffer(body[4 * channels :], dtype=np.int8).reshape(shape)
    return values.astype(np.float32) * scales[:, None, None]
