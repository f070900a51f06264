"""An uploaded image's two steps, shared by every route that takes image bytes (the page's ``POST /api/images``
and the annotation tools' adapters): decode it within the pixel and memory limits, then have it encoded (or
found in the embedding store). Each refusal is an ``UploadRefused`` with the HTTP status and code to answer.
"""

from __future__ import annotations

from ..runtime import heap
from .encoder import EncodeResult, EncoderService
from .images import DecodedImage, ImageError, decode_image
from .interfaces import EncoderBusy, EncoderClosed, RetryLater
from .memory import OverBudget, PixelBudget
from .model_runner import INPUT_SIDE


class UploadRefused(Exception):
    """An image that cannot be decoded or encoded now: answer ``status`` with ``code``, ``message`` and
    ``headers`` (``Retry-After`` on 503)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def decode_upload(data: bytes, max_pixels: int, pixel_budget: PixelBudget) -> DecodedImage:
    """``decode_image`` to the encoder's input size, holding ``pixel_budget`` while decoding."""
    try:
        decoded = decode_image(data, max_pixels, longest_side=INPUT_SIDE, reserve=pixel_budget.reserve)
    except ImageError as error:
        raise UploadRefused(error.status, error.code, error.message) from None
    except OverBudget as error:
        raise UploadRefused(503, "decoder_busy", str(error), {"Retry-After": str(error.retry_after)}) from None
    if decoded.original_size[0] * decoded.original_size[1] > 4 * INPUT_SIDE * INPUT_SIDE:
        heap.trim()  # A large decode just ended: give its memory back now, not at some later malloc.
    return decoded


def encode_decoded(encoder: EncoderService, decoded: DecodedImage) -> EncodeResult:
    """The embedding of a decoded upload, from the store or the encoder; busy, timed out or closing is a 503."""
    try:
        return encoder.encode(decoded.pixels, original_size=decoded.original_size)
    except RetryLater as error:
        code = getattr(error, "code", None) or ("encoder_busy" if isinstance(error, EncoderBusy) else "encoder_timeout")
        raise UploadRefused(503, code, str(error), {"Retry-After": str(error.retry_after)}) from None
    except EncoderClosed as error:
        raise UploadRefused(503, "shutting_down", str(error), {"Retry-After": "5"}) from None
