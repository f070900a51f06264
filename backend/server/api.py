"""The ``/api`` blueprint: ``POST /api/images``, ``GET /api/embeddings/<id>``, ``GET /api/model``,
``GET /api/gallery``."""

from __future__ import annotations

import io

from flask import Blueprint, Request, Response, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..runtime.quote import shorten
from ..services import codec
from ..services.cache import is_valid_key
from ..services.decoders import public_decoder
from ..services.images import ImageError, decode_image
from ..services.interfaces import EncoderBusy, EncoderClosed, RetryLater
from ..services.memory import OverBudget, release_memory
from ..services.model_runner import INPUT_SIDE
from .compression import accepts_gzip, client_has
from .errors import ApiError
from .state import app_state
from .static import IMMUTABLE

api = Blueprint("api", __name__, url_prefix="/api")


class InMemoryRequest(Request):
    """Keeps multipart file parts in memory (Werkzeug spools parts over 500 KB to a temporary file); the body
    is already bounded by MAX_CONTENT_LENGTH, and uploads are never written to disk."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


@api.post("/images")
def upload_image():
    state = app_state()
    data = _upload_bytes()
    try:
        decoded = decode_image(
            data, state.config.max_pixels, longest_side=INPUT_SIDE, reserve=state.pixel_budget.reserve
        )
    except ImageError as error:
        raise ApiError(error.status, error.code, error.message) from None
    except OverBudget as error:
        raise ApiError(503, "decoder_busy", str(error), {"Retry-After": str(error.retry_after)}) from None
    finally:
        del data
    if decoded.original_size[0] * decoded.original_size[1] > 4 * INPUT_SIDE * INPUT_SIDE:
        release_memory()  # A large decode just ended: give its memory back now, not at some later malloc.
    try:
        result = state.encoder.encode(decoded.pixels, original_size=decoded.original_size)
    except RetryLater as error:
        code = getattr(error, "code", None) or ("encoder_busy" if isinstance(error, EncoderBusy) else "encoder_timeout")
        raise ApiError(503, code, str(error), {"Retry-After": str(error.retry_after)}) from None
    except EncoderClosed as error:
        raise ApiError(503, "shutting_down", str(error), {"Retry-After": "5"}) from None
    entry = result.entry
    shape = list(entry.embedding.shape)
    height, width = entry.original_size
    fmt = codec.DEFAULT_FORMAT
    return jsonify(
        id=result.image_id,
        width=width,
        height=height,
        input_size=list(entry.input_size),
        model_type=state.weights.model_type,
        weights=state.weights.weights,
        embedding_url=f"/api/embeddings/{result.image_id}?format={fmt}",
        format=fmt,
        dtype=codec.DTYPES[fmt],
        shape=shape,
        bytes=codec.encoded_size(tuple(shape), fmt),
        formats={name: codec.encoded_size(tuple(shape), name) for name in codec.FORMATS},
        encode_ms=round(entry.encode_ms, 1),
        wait_ms=round(result.wait_ms, 1),
        batch_size=result.batch_size,
        cache_hit=result.cache_hit,
        source_format=decoded.source_format,
    )


@api.get("/embeddings/<image_id>")
def get_embedding(image_id: str):
    state = app_state()
    if not is_valid_key(image_id):
        raise ApiError(400, "malformed_id", "image ids are 32 lowercase hexadecimal characters")
    fmt = request.args.get("format", codec.DEFAULT_FORMAT)
    if fmt not in codec.FORMATS:
        raise ApiError(400, "unknown_format", f"format must be one of {', '.join(codec.FORMATS)}, not {shorten(fmt)!r}")
    entry = state.encoder.embedding(image_id)
    if entry is None:
        raise ApiError(
            404, "unknown_id", "no embedding with this id (unknown, or evicted from the cache): upload the image again"
        )

    body, gzipped = state.compressed.get(
        image_id, fmt, accepts_gzip(), lambda: codec.encode_embedding(entry.embedding, fmt)
    )
    etag = f"{image_id}-v{codec.VERSION}-{fmt}" + ("-gz" if gzipped else "")
    headers = {
        "Cache-Control": IMMUTABLE,
        "ETag": f'"{etag}"',
        "Vary": "Accept-Encoding",
        "X-Embedding-Format": fmt,
        "X-Embedding-Shape": ",".join(str(v) for v in entry.embedding.shape),
        "X-Uncompressed-Length": str(codec.encoded_size(entry.embedding.shape, fmt)),
        "Access-Control-Expose-Headers": "Content-Length, X-Uncompressed-Length, X-Embedding-Format, X-Embedding-Shape",
    }
    if client_has(etag):
        return Response(status=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    response = Response(body, status=200, mimetype="application/octet-stream", headers=headers)
    response.headers["Content-Length"] = str(len(body))
    return response


@api.get("/model")
def model_info():
    state = app_state()
    return jsonify(
        model_type=state.weights.model_type,
        weights=state.weights.weights,
        weights_message=state.weights.message,
        image_size=INPUT_SIDE,
        mask_threshold=0.0,
        device=state.device,
        precision=state.precision,
        encoder_path=state.encoder.encoder_path,
        decoders=[public_decoder(d) for d in state.decoders.decoders],
        default_decoder=state.decoders.default,
        decoder_error=state.decoders.error,
        embedding_formats=list(codec.FORMATS),
        default_embedding_format=codec.DEFAULT_FORMAT,
        ort_version=state.ort_version,
    )


@api.get("/gallery")
def gallery_listing():
    return jsonify(app_state().gallery.listing())


def _upload_bytes() -> bytes:
    content_type = request.mimetype or ""
    if content_type == "application/x-www-form-urlencoded":
        raise ApiError(
            415, "unsupported_upload", "send the image as multipart field 'image' or as the raw request body"
        )
    if content_type.startswith("multipart/form-data"):
        upload = request.files.get("image")
        _refuse_truncated_stream()
        if upload is None:
            raise ApiError(400, "missing_image", "a multipart upload needs the image in a field named 'image'")
        return upload.read()
    data = request.get_data(cache=False)
    _refuse_truncated_stream()
    return data


def _refuse_truncated_stream() -> None:
    # A chunked body (no Content-Length) is cut at MAX_CONTENT_LENGTH without an error; reaching the cut
    # means the body was at least that large.
    if request.content_length is None and getattr(request.stream, "is_exhausted", False):
        raise RequestEntityTooLarge()
