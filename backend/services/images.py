"""Safe decoding of uploaded images into H x W x 3 uint8 RGB arrays.

Only common raster formats are opened (never EPS/PDF-style plugins that start external programs); the pixel
count is checked from the header before any pixel is decoded; EXIF orientation is applied; palette, CMYK,
grayscale, 16-bit and alpha images become plain RGB (transparent areas over white); animations give their
first frame. Every failure is an ``ImageError`` carrying the HTTP status and a plain message.

With ``longest_side`` a larger image is downscaled as soon as it is decoded (JPEGs already while decoding,
by DCT scaling), with the same resize the encoder applies, so only the encoder's input is kept; with
``reserve`` the pixels about to be decoded are held against a budget (``backend.services.memory.PixelBudget``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import struct
from collections.abc import Callable

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
    """``pixels``: uint8 [H, W, 3] RGB, orientation applied (downscaled when decoded with ``longest_side``).
    ``original_size``: (H, W) of the upload, orientation applied. ``source_format``/``source_mode``: as
    uploaded."""

    pixels: np.ndarray
    source_format: str
    source_mode: str
    original_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.pixels.shape[0], self.pixels.shape[1]


def decode_image(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    longest_side: int | None = None,
    reserve: Callable[[int], contextlib.AbstractContextManager] | None = None,
) -> DecodedImage:
    """Decodes uploaded bytes to RGB, or raises ``ImageError`` (400, 413 or 415).

    ``longest_side``: downscale larger images to it (resize-longest-side, Pillow bilinear, as the encoder).
    ``reserve(pixels)``: a context manager held while that many pixels are decoded (it may raise to refuse).
    """
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
        raise ImageError(
            413, "image_too_large", f"the image has too many pixels to decode safely ({_brief(error)})"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            415,
            "unsupported_image",
            "the upload is not an image this server reads; send a JPEG, PNG, WebP, GIF, BMP or TIFF",
        ) from None
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageError(400, "corrupt_image", f"the image header cannot be read: {_brief(error)}") from None

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
        target = None
        if longest_side is not None and max(width, height) > longest_side:
            target = _resized_size(width, height, longest_side)
            if source_format == "JPEG":  # Decode at 1/2, 1/4 or 1/8 scale when that still covers the target.
                image.draft(image.mode, target)
        with reserve(image.size[0] * image.size[1]) if reserve is not None else contextlib.nullcontext():
            try:
                image.seek(0)  # Animated GIF/WebP/APNG, multi-page TIFF: the first frame.
                image.load()
                oriented = ImageOps.exif_transpose(image)
                if target is not None and oriented.size != image.size:  # Rotated by EXIF: sides swap.
                    target = target[::-1]
                original = (height, width) if oriented.size == image.size else (width, height)
                pixels = _to_rgb(oriented)
                del oriented
                if target is not None:
                    resized = Image.fromarray(pixels).resize(target, Image.BILINEAR)
                    pixels = np.asarray(resized, dtype=np.uint8)
                    del resized
            except Image.DecompressionBombError as error:
                raise ImageError(
                    413, "image_too_large", f"the image has too many pixels to decode safely ({_brief(error)})"
                ) from None
            except (OSError, ValueError, SyntaxError, EOFError, struct.error) as error:
                raise ImageError(
                    400, "corrupt_image", f"the image data is truncated or corrupt: {_brief(error)}"
                ) from None
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels),
        source_format=source_format,
        source_mode=source_mode,
        original_size=original,
    )


def _resized_size(width: int, height: int, longest_side: int) -> tuple[int, int]:
    """(width, height) with the longest side ``longest_side``: ``ResizeLongestSide.get_preprocess_shape``."""
    scale = longest_side / max(width, height)
    return int(width * scale + 0.5), int(height * scale + 0.5)


def _brief(error: Exception) -> str:
    """Pillow's message, cut short: some quote bytes of the upload."""
    text = str(error)
    return text if len(text) <= 120 else text[:117] + "..."


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
