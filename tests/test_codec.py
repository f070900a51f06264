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


# --- version 2: SAM 2's three tensors ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam2_features() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        name: (rng.standard_normal(shape) * rng.uniform(0.01, 2.0, (shape[0], 1, 1))).astype(np.float32)
        for name, shape in codec.SAM2_SHAPES.items()
    }


@pytest.mark.parametrize("fmt", list(codec.SAM2_FORMATS))
def test_sam2_bundles_round_trip_within_their_step_and_have_their_documented_size(sam2_features, fmt):
    data = codec.encode_sam2_features(sam2_features, fmt)
    assert len(data) == codec.sam2_encoded_size(fmt)
    assert data[:4] == b"SAME" and data[4] == 2 and data[5] == 3
    decoded = codec.decode_sam2_features(data)
    formats = codec.SAM2_FORMATS[fmt]
    if fmt in codec.SAM2_LADDERS:
        fitted, formats = codec.fitted_sam2_features(sam2_features, codec.SAM2_LADDERS[fmt])
        assert fitted == data
    for name, tensor_fmt in zip(codec.SAM2_TENSORS, formats, strict=True):
        original = sam2_features[name]
        peaks = np.abs(original).max(axis=(1, 2))[:, None, None]
        error = np.abs(decoded[name] - original)
        if tensor_fmt == "f32":
            assert np.array_equal(decoded[name], original)
        elif tensor_fmt == "f16":
            assert (error <= 1e-3 * np.abs(original) + 1e-7).all()
        else:
            levels = {**codec.INT8_LEVELS, "int4": 7}[tensor_fmt]
            # Rounding to the nearest level: at most half a step (peak / levels / 2) per value.
            assert (error <= peaks / levels / 2 + 1e-6).all(), name


def test_int4_packs_two_values_a_byte_low_nibble_first():
    array = np.array([[[7.0, -7.0, 1.0]]], dtype=np.float32)
    scales, packed = codec.quantize_int4(array)
    assert scales.tolist() == [1.0]
    assert packed.tolist() == [0x97, 0x01]  # 7 | (-7 & 0xF) << 4, then 1 and a zero pad
    assert codec.dequantize_int4(scales, packed, (1, 1, 3)).tolist() == [[[7.0, -7.0, 1.0]]]


def test_malformed_sam2_bundles_are_refused(sam2_features):
    data = codec.encode_sam2_features(sam2_features, "int8-int4")
    with pytest.raises(codec.CodecError, match="after the last tensor"):
        codec.decode_sam2_features(data + b"\0")
    with pytest.raises(codec.CodecError, match="needs"):
        codec.decode_sam2_features(data[:-1])
    with pytest.raises(codec.CodecError, match="not a SAM 2 bundle"):
        codec.decode_sam2_features(codec.encode_embedding(sam2_features["image_embed"], "int8"))
    with pytest.raises(codec.CodecError, match="unknown SAM 2 format"):
        codec.encode_sam2_features(sam2_features, "int2")
    with pytest.raises(codec.CodecError, match="shape"):
        codec.encode_sam2_features({**sam2_features, "image_embed": np.zeros((256, 32, 32), np.float32)})


def test_narrow_int8_records_read_back_as_int8_and_compress_better(sam2_features):
    import gzip

    wide = codec.encode_sam2_features(sam2_features, "int8")
    narrow = codec.encode_sam2_features(sam2_features, "int7")
    assert len(wide) == len(narrow)
    # Same dtype code (2) in every record header: a version-2 reader needs nothing new.
    offset = codec.BUNDLE_HEADER.size
    for name in codec.SAM2_TENSORS:
        assert narrow[offset + 5] == 2
        offset += codec.tensor_size(codec.SAM2_SHAPES[name], "int7")
    assert len(gzip.compress(narrow, 6)) < 0.9 * len(gzip.compress(wide, 6))


def test_a_fitted_bundle_has_the_most_levels_whose_gzip_fits_the_budget(sam2_features):
    import gzip

    ladder = codec.SAM2_LADDERS["int8-fit"]
    bundles = [codec.fitted_sam2_features(sam2_features, (rung,))[0] for rung in ladder]
    sizes = [len(gzip.compress(data, codec.EMBEDDING_GZIP_LEVEL, mtime=0)) for data in bundles]
    assert sizes == sorted(sizes, reverse=True)  # each rung has fewer levels and gzips smaller
    for index, rung in enumerate(ladder):
        data, chosen = codec.fitted_sam2_features(sam2_features, ladder, budget=sizes[index])
        assert chosen == rung and data == bundles[index]
        # One byte under a rung's size: the next rung (the last one when none fits).
        _, chosen = codec.fitted_sam2_features(sam2_features, ladder, budget=sizes[index] - 1)
        assert chosen == ladder[min(index + 1, len(ladder) - 1)]


def test_row_difference_records_read_back_the_int8_values_exactly_and_gzip_smaller_on_smooth_features():
    import gzip

    rng = np.random.default_rng(2)
    # Smooth along rows, as feature maps are, with values at both ends of the range (the differences wrap).
    smooth = {
        name: np.cumsum(rng.standard_normal(shape), axis=2).astype(np.float32)
        for name, shape in codec.SAM2_SHAPES.items()
    }
    plain = codec.encode_sam2_features(smooth, "int8")
    rows, _ = codec.fitted_sam2_features(smooth, (("int8d", "int8d", "int8d"),))
    assert len(rows) == len(plain)
    offset = codec.BUNDLE_HEADER.size
    for name in codec.SAM2_TENSORS:
        assert rows[offset + 5] == 4  # dtype 4 in each record header
        offset += codec.tensor_size(codec.SAM2_SHAPES[name], "int8")
    for name, array in codec.decode_sam2_features(rows).items():
        assert np.array_equal(array, codec.decode_sam2_features(plain)[name]), name
    assert len(gzip.compress(rows, 1)) < 0.9 * len(gzip.compress(plain, 1))
