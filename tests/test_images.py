"""Safe image decoding: what comes out (RGB pixels, orientation) and what is refused (with which status)."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from backend.services.images import ImageError, decode_image


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def gradient(width: int = 48, height: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), np.full_like(x, 90)], axis=-1).astype(np.uint8)


def refused(data: bytes, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        decode_image(data, **kwargs)
    return info.value


def test_png_round_trips_exactly_as_rgb_uint8():
    pixels = gradient()
    decoded = decode_image(encode(Image.fromarray(pixels), "PNG"))
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (32, 48, 3)
    assert np.array_equal(decoded.pixels, pixels)
    assert decoded.source_format == "PNG"


def test_exif_orientation_is_applied():
    pixels = gradient()
    exif = Image.Exif()
    exif[0x0112] = 6  # Rotate 90 degrees clockwise to display.
    decoded = decode_image(encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes()))
    assert decoded.pixels.shape == (48, 32, 3)
    # The stored left column (red = 0) ends up on top after a clockwise turn.
    assert decoded.pixels[0, :, 0].mean() < 20 and decoded.pixels[-1, :, 0].mean() > 235


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # Pure red in CMYK.
    decoded = decode_image(encode(cmyk, "JPEG", quality=95))
    assert decoded.source_mode == "CMYK"
    red, green, blue = decoded.pixels.reshape(-1, 3).mean(axis=0)
    assert red > 230 and green < 25 and blue < 25


def test_palette_with_transparency_composites_over_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))
    decoded = decode_image(encode(image, "PNG", transparency=0))
    assert decoded.pixels[0, 0].tolist() == [200, 10, 10]
    assert decoded.pixels[0, 7].tolist() == [255, 255, 255]


def test_rgba_alpha_blends_over_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 2] = 255
    rgba[..., 3] = 128
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert np.all(np.abs(decoded.pixels[0, 0].astype(int) - [127, 127, 255]) <= 1)


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    wide = (np.arange(256, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    decoded = decode_image(encode(Image.fromarray(wide), "PNG"))
    assert decoded.pixels.shape == (16, 16, 3)
    assert np.array_equal(decoded.pixels[..., 0], np.arange(256, dtype=np.uint8).reshape(16, 16))
    assert np.array_equal(decoded.pixels[..., 0], decoded.pixels[..., 2])


def test_grayscale_becomes_three_equal_channels():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    decoded = decode_image(encode(Image.fromarray(gray, "L"), "PNG"))
    assert np.array_equal(decoded.pixels, np.repeat(gray[..., None], 3, axis=2))


def test_animated_gif_gives_its_first_frame():
    first = Image.new("RGB", (10, 10), (255, 0, 0))
    second = Image.new("RGB", (10, 10), (0, 0, 255))
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    decoded = decode_image(data)
    assert decoded.pixels[5, 5].tolist() == [255, 0, 0]


@pytest.mark.parametrize(
    "data, status, code",
    [
        (b"", 400, "empty_image"),
        (b"this is plain text, not an image at all", 415, "unsupported_image"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", 415, "unsupported_image"),
        (b'\xef\xbb\xbf<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', 415, "unsupported_image"),
        (b"  <svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>", 415, "unsupported_image"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "unsupported_image"),
    ],
)
def test_non_images_are_refused(data, status, code):
    error = refused(data)
    assert (error.status, error.code) == (status, code)
    assert error.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_refused_as_corrupt(fmt):
    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    error = refused(data[: len(data) // 2])
    assert (error.status, error.code) == (400, "corrupt_image")


def test_disguised_file_with_image_extension_is_judged_by_content():
    error = refused(b"GIF89a<script>alert(1)</script>")
    assert error.status in (400, 415)


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header is patched to claim a huge size (a decompression bomb's signature)."""
    data = bytearray(encode(Image.new("1", (1, 1)), "PNG"))
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_refuses_before_decoding():
    error = refused(png_claiming_size(12_000, 12_000))
    assert (error.status, error.code) == (413, "image_too_large")
    assert "144,000,000" in error.message
    small_limit = refused(encode(Image.fromarray(gradient()), "PNG"), max_pixels=1000)
    assert small_limit.status == 413


def test_pillow_bomb_guard_also_answers_413():
    # With our own limit raised out of the way, Pillow's guard (2 x MAX_IMAGE_PIXELS) still refuses.
    error = refused(png_claiming_size(60_000, 60_000), max_pixels=10**12)
    assert (error.status, error.code) == (413, "image_too_large")


def test_absurd_aspect_ratio_is_refused():
    error = refused(encode(Image.new("RGB", (3000, 2)), "PNG"))
    assert (error.status, error.code) == (400, "bad_aspect_ratio")
    assert decode_image(encode(Image.new("RGB", (1000, 2)), "PNG")).pixels.shape == (2, 1000, 3)
