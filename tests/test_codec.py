"""The embedding wire format: exact header bytes, sizes, round trips, and rejection of malformed bodies."""

import struct

import numpy as np
import pytest

from backend.services import codec


@pytest.fixture(scope="module")
def embedding() -> np.ndarray:
    rng = np.random.default_rng(0)
    # Per-channel spread like a real embedding: channels differ in range by orders of magnitude.
    return (rng.standard_normal((256, 64, 64)) * rng.uniform(0.01, 2.0, (256, 1, 1))).astype(np.float32)


def test_header_bytes_follow_the_documented_layout(embedding):
    data = codec.encode_embedding(embedding, "f16")
    assert data[:4] == b"SAME"
    assert data[4] == 1 and data[5] == 1
    assert struct.unpack("<HHHHH", data[6:16]) == (0, 256, 64, 64, 0)
    assert codec.encode_embedding(embedding, "f32")[5] == 0
    assert codec.encode_embedding(embedding, "int8")[5] == 2


@pytest.mark.parametrize(
    "fmt, size",
    [("f32", 16 + 4 * 256 * 64 * 64), ("f16", 16 + 2 * 256 * 64 * 64), ("int8", 16 + 4 * 256 + 256 * 64 * 64)],
)
def test_sizes_on_the_wire(embedding, fmt, size):
    data = codec.encode_embedding(embedding, fmt)
    assert len(data) == size == codec.encoded_size((256, 64, 64), fmt)
    assert len(codec.encode_embedding(embedding, "int8")) <= 1_100_000


def test_float32_round_trip_is_exact_and_accepts_a_batch_axis(embedding):
    assert np.array_equal(codec.decode_embedding(codec.encode_embedding(embedding[None], "f32")), embedding)


def test_float16_payload_is_little_endian_half_precision(embedding):
    data = codec.encode_embedding(embedding, "f16")
    payload = np.frombuffer(data[16:], dtype="<f2").reshape(256, 64, 64)
    assert np.array_equal(payload, embedding.astype(np.float16))
    assert np.allclose(codec.decode_embedding(data), embedding, rtol=1e-3, atol=1e-6)


def test_int8_values_are_q_times_per_channel_scale(embedding):
    data = codec.encode_embedding(embedding, "int8")
    scales = np.frombuffer(data[16 : 16 + 1024], dtype="<f4")
    values = np.frombuffer(data[16 + 1024 :], dtype=np.int8).reshape(256, 64, 64)
    assert np.allclose(scales, np.abs(embedding).reshape(256, -1).max(axis=1) / 127, rtol=1e-6)
    assert np.abs(values).max() == 127
    decoded = codec.decode_embedding(data)
    assert np.array_equal(decoded, values.astype(np.float32) * scales[:, None, None])
    # Rounding error is at most half a step in every channel.
    assert (np.abs(decoded - embedding) <= scales[:, None, None] / 2 + 1e-7).all()


def test_int8_all_zero_channel_decodes_to_zero(embedding):
    zeroed = embedding.copy()
    zeroed[3] = 0
    decoded = codec.decode_embedding(codec.encode_embedding(zeroed, "int8"))
    assert np.all(decoded[3] == 0) and np.isfinite(decoded).all()


def test_float16_saturates_instead_of_overflowing_to_infinity():
    big = np.full((2, 2, 2), 1e6, dtype=np.float32)
    assert np.isfinite(codec.decode_embedding(codec.encode_embedding(big, "f16"))).all()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: b"NOPE" + d[4:], "magic"),
        (lambda d: d[:4] + b"\x02" + d[5:], "version"),
        (lambda d: d[:5] + b"\x07" + d[6:], "dtype"),
        (lambda d: d[:-1], "needs"),
        (lambda d: d[:10], "header"),
    ],
)
def test_malformed_bodies_are_rejected_with_a_reason(embedding, mutate, message):
    with pytest.raises(codec.CodecError, match=message):
        codec.decode_embedding(mutate(codec.encode_embedding(embedding[:2], "f16")))


def test_unknown_format_and_bad_shapes_are_rejected(embedding):
    with pytest.raises(codec.CodecError, match="unknown embedding format"):
        codec.encode_embedding(embedding, "bf16")
    with pytest.raises(codec.CodecError, match="shape"):
        codec.encode_embedding(embedding[0], "f16")
    with pytest.raises(codec.CodecError, match="NaN"):
        codec.encode_embedding(np.full((1, 2, 2), np.nan, dtype=np.float32), "f16")
