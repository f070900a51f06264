"""Safe decoding of uploaded images into H x W x 3 uint8 RGB arrays.

Only common raster formats are opened (never EPS/PDF-style plugins that start external programs); the pixel
count is checked from the header before any pixel is decoded; EXIF orientation is applied; palette, CMYK,
grayscale, 16-bit and alpha images become plain RGB (transparent areas over white); animations give their
first frame. Every failure is an ``ImageError`` carrying the HTTP status and a plain message.
"""

from __future__ import annotations

import dataclasses
import io
import struct

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
DEFAULT_MAX_PIXELS = 40_000_000
# Resized to a longest side of 1024, a thinner image would have a short side of zero pixels.
MAX_ASPECT_RATIO = 500
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")


class ImageError(ValueError):
    """An upload that cannot become an RGB image; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """``pixels``: uint8 [H, W, 3] RGB, orientation applied. ``source_format``/``source_mode``: as uploaded."""

    pixels: np.ndarray
    source_format: str
    source_mode: str

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.pixels.shape[0], self.pixels.shape[1]


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decodes uploaded bytes to RGB, or raises ``ImageError`` (400, 413 or 415)."""
    if not data:
        raise ImageError(400, "empty_image", "the upload is empty (0 bytes); send an image file")
    if _looks_like_markup(data):
        raise ImageError(
            415,
            "unsupported_image",
            "this is markup (HTML, SVG or XML), not a raster image; send a JPEG, PNG, WebP, GIF, BMP or TIFF",
        )
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as error:
        raise ImageError(413, "image_too_large", f"the image has too many pixels to decode safely ({error})") from None
    except UnidentifiedImageError:
        raise ImageError(
            415,
            "unsupported_image",
            "the upload is not an image this server reads; send a JPEG, PNG, WebP, GIF, BMP or TIFF",
        ) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(400, "corrupt_image", f"the image header cannot be read: {error}") from None

    with image:
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageError(400, "corrupt_image", f"the image has no pixels ({width}x{height})")
        if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
            raise ImageError(
                400,
                "bad_aspect_ratio",
                f"the image is {width}x{height}; sides may differ by at most {MAX_ASPECT_RATIO}:1",
            )
        if width * height > max_pixels:
            raise ImageError(
                413,
                "image_too_large",
                f"the image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}",
            )
        source_format, source_mode = image.format or "unknown", image.mode
        try:
            image.seek(0)  # Animated GIF/WebP/APNG, multi-page TIFF: the first frame.
            image.load()
            oriented = ImageOps.exif_transpose(image)
            pixels = _to_rgb(oriented)
        except Image.DecompressionBombError as error:
            raise ImageError(
                413, "image_too_large", f"the image has too many pixels to decode safely ({error})"
            ) from None
        except (OSError, ValueError, SyntaxError, EOFError, struct.error) as error:
            raise ImageError(400, "corrupt_image", f"the image data is truncated or corrupt: {error}") from None
    return DecodedImage(pixels=pixels, source_format=source_format, source_mode=source_mode)


def _looks_like_markup(data: bytes) -> bool:
    head = data[:256].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith(b"<")


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # convert("L") would clip 16-bit values at 255 instead of scaling them.
        wide = np.asarray(image).astype(np.float64)
        gray = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "F":
        gray = np.asarray(image, dtype=np.float64)
        if np.nanmax(gray, initial=0.0) <= 1.0:
            gray = gray * 255.0
        gray = np.clip(np.nan_to_num(gray), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
