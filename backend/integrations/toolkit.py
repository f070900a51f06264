"""What every tool adapter shares: the services the app factory hands down, JSON errors, image bytes to a cached
embedding (the same decoding, limits and cache as the page's uploads), and a prompt to masks on the server.

Adapters translate a tool's protocol onto these calls and nothing else; they never import the HTTP layer
(``backend.server``), which registers them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any, Protocol

import numpy as np
from flask import Blueprint, current_app, jsonify
from werkzeug.exceptions import HTTPException

from ..runtime.quote import shorten
from ..services.cache import CachedEmbedding
from ..services.encoder import EncodeResult, EncoderService
from ..services.interfaces import RetryLater
from ..services.memory import PixelBudget
from ..services.uploads import UploadRefused, decode_upload, encode_decoded

EXTENSION = "sam_integrations"


class Grounder(Protocol):
    """The text-grounding seam (``backend.text``), bound to its default parameters by the app factory: the
    instances of ``phrases`` in uint8 RGB ``pixels`` [H, W, 3], each with ``box`` [x0, y0, x1, y1] in those
    pixels, ``score`` and ``label`` (the phrase matched)."""

    def __call__(self, pixels: np.ndarray, phrases: list[str]) -> list[Any]: ...


@dataclasses.dataclass
class Toolkit:
    """The services the adapters use, one per app: ``config`` (``backend.config.Config``), ``encoder`` (the page's
    ``EncoderService``: same cache, same image ids), ``pixel_budget`` (decoding memory, shared with uploads) and
    ``grounder`` (a text grounder, or None when the server has none)."""

    config: Any
    encoder: EncoderService
    pixel_budget: PixelBudget
    grounder: Grounder | None = None


def toolkit() -> Toolkit:
    return current_app.extensions[EXTENSION]


class ToolError(Exception):
    """Answered as JSON ``{"error": code, "message": message}`` with ``status`` (and ``headers``)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def answer_errors_as_json(blueprint: Blueprint) -> None:
    """Every error raised in the blueprint's routes becomes ``{"error", "message"}`` with its status: the tools
    show the message to their users."""

    @blueprint.errorhandler(ToolError)
    def _tool_error(error: ToolError):
        return _json_error(error.status, error.code, error.message, error.headers)

    @blueprint.errorhandler(RetryLater)
    def _retry_later(error: RetryLater):
        code = getattr(error, "code", None) or "unavailable"
        return _json_error(503, code, str(error), {"Retry-After": str(error.retry_after)})

    @blueprint.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        code = (error.name or "error").lower().replace(" ", "_")
        return _json_error(error.code or 500, code, error.description or error.name)


def _json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    response = jsonify(error=code, message=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def json_object(body: Any, what: str) -> dict:
    """``body`` (``request.get_json(silent=True)``) when it is a JSON object, else a 400."""
    if not isinstance(body, dict):
        raise ToolError(400, "malformed_request", f"the {what} body must be a JSON object")
    return body


def base64_bytes(text: Any, field: str, max_bytes: int) -> bytes:
    """The bytes of a base64 field (a ``data:...;base64,`` prefix allowed), or a 400/413."""
    if not isinstance(text, str) or not text:
        raise ToolError(400, "missing_image", f"{field} must be a non-empty base64 string")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > (max_bytes + 2) // 3 * 4 + 4:
        raise ToolError(413, "image_too_large", f"{field} is larger than the limit of {max_bytes:,} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ToolError(400, "bad_base64", f"{field} is not valid base64 ({shorten(text, 24)})") from None


def embed_image(data: bytes) -> tuple[EncodeResult, np.ndarray]:
    """Image bytes decoded and encoded as the page's uploads are (formats, pixel and memory limits, the shared
    embedding cache): the embedding and the decoded pixels (downscaled to the encoder's input)."""
    kit = toolkit()
    try:
        decoded = decode_upload(data, kit.config.max_pixels, kit.pixel_budget)
        return encode_decoded(kit.encoder, decoded), decoded.pixels
    except UploadRefused as error:
        raise ToolError(error.status, error.code, error.message, error.headers) from None


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One object's prompt in original-image pixels: ``points`` [N, 2] (x, y) with ``labels`` [N] (1 keep, 0
    leave out), and/or ``box`` [x0, y0, x1, y1]."""

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return self.box is None and (self.points is None or len(self.points) == 0)


def predict_mask(entry: CachedEmbedding, prompt: Prompt) -> tuple[np.ndarray, float]:
    """The best mask (bool [H, W] at the original size) and its predicted IoU for ``prompt`` on a cached image:
    ``SamPredictor`` on the cached embedding, so the mask is the one the model gives for that prompt (several
    masks for one click, the best kept, as SAM's own demos do; one mask for several points or a box).
    On SAM 2 / 2.1, ``SAM2ImagePredictor`` on the cached features."""
    if entry.is_sam2:
        from ..sam2 import SAM2ImagePredictor

        predictor = SAM2ImagePredictor(toolkit().encoder.model)
        predictor.set_features(entry.predictor_features(), tuple(entry.original_size))
    else:
        from ..sam import SamPredictor

        predictor = SamPredictor(toolkit().encoder.model)
        predictor.set_embedding(entry.embedding, tuple(entry.original_size), tuple(entry.input_size))
    has_points = prompt.points is not None and len(prompt.points) > 0
    ambiguous = prompt.box is None and has_points and len(prompt.points) == 1
    masks, scores, _ = predictor.predict(
        point_coords=prompt.points if has_points else None,
        point_labels=prompt.labels if has_points else None,
        box=prompt.box,
        multimask_output=ambiguous,
    )
    best = int(np.argmax(scores))
    return masks[best].astype(bool, copy=False), float(scores[best])  # SAM2ImagePredictor's masks are 0/1 floats
