"""Bounded decoding memory: early downscale (identical to the encoder's own resize), JPEG DCT scaling of
large images, the process-wide pixel budget."""

import contextlib
import io
import threading

import numpy as np
import pytest
from PIL import Image

from backend.sam.transforms import ResizeLongestSide
from backend.services.images import decode_image
from backend.services.memory import OverBudget, PixelBudget


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def smooth_image(width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A tiny real JPEG whose frame header claims ``width`` x ``height`` (its data then runs out)."""
    data = bytearray(encoded(Image.new("RGB", (16, 16), (200, 30, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_a_large_image_is_downscaled_exactly_as_the_encoder_would():
    pixels = smooth_image(2048, 1536)
    decoded = decode_image(encoded(Image.fromarray(pixels), "PNG"), longest_side=1024)
    assert decoded.original_size == (1536, 2048) and decoded.pixels.shape == (768, 1024, 3)
    np.testing.assert_array_equal(decoded.pixels, ResizeLongestSide(1024).apply_image(pixels))
    # Already at most the longest side: untouched.
    small = decode_image(encoded(Image.fromarray(pixels[:500, :700]), "PNG"), longest_side=1024)
    assert small.original_size == (500, 700) and np.array_equal(small.pixels, pixels[:500, :700])


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_and_keeps_its_size():
    pixels = smooth_image(4400, 3300)
    reserved = []

    @contextlib.contextmanager
    def reserve(count):
        reserved.append(count)
        yield

    decoded = decode_image(encoded(Image.fromarray(pixels), "JPEG", quality=90), longest_side=1024, reserve=reserve)
    assert decoded.original_size == (3300, 4400) and decoded.pixels.shape == (768, 1024, 3)
    assert reserved == [1100 * 825]  # Decoded at 1/4 scale: 1/16 of the pixels.
    reference = ResizeLongestSide(1024).apply_image(pixels).astype(int)
    assert np.abs(decoded.pixels.astype(int) - reference).mean() < 3


def test_exif_rotation_swaps_the_reported_size_and_the_target():
    exif = Image.Exif()
    exif[0x0112] = 6  # Rotate 90 degrees clockwise when shown.
    data = encoded(Image.fromarray(smooth_image(2000, 1000)), "JPEG", exif=exif.tobytes())
    decoded = decode_image(data, longest_side=1024)
    assert decoded.original_size == (2000, 1000) and decoded.pixels.shape == (1024, 512, 3)


def test_a_jpeg_bomb_costs_a_fraction_of_its_claimed_pixels():
    reserved = []

    @contextlib.contextmanager
    def reserve(count):
        reserved.append(count)
        yield

    decoded = decode_image(jpeg_claiming(6000, 6000), longest_side=1024, reserve=reserve)
    assert reserved == [1500 * 1500]  # Not 36 MP: libjpeg scaled the (mostly missing) data down by 4.
    assert decoded.original_size == (6000, 6000) and decoded.pixels.shape == (1024, 1024, 3)


def test_the_budget_refuses_once_full_and_frees_on_release():
    budget = PixelBudget(100, wait_s=0.05)
    with budget.reserve(60):
        with pytest.raises(OverBudget) as refused, budget.reserve(60):
            pass
        assert refused.value.retry_after >= 1
        with budget.reserve(40):
            assert budget.in_use == 100
    assert budget.in_use == 0 and budget.refused == 1
    with budget.reserve(10**9):  # One request larger than the budget still runs alone.
        assert budget.in_use == 100


def test_a_waiting_reservation_goes_ahead_when_room_is_freed():
    budget = PixelBudget(100, wait_s=5)
    release = threading.Event()
    held = threading.Event()

    def holder():
        with budget.reserve(100):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    threading.Timer(0.1, release.set).start()
    with budget.reserve(50):
        assert budget.in_use == 50
    thread.join(5)
