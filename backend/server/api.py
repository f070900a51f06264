"""The ``/api`` blueprint: ``POST /api/images``, ``GET /api/embeddings/<id>``, ``GET /api/model``,
``GET /api/gallery``."""

from __future__ import annotations

import dataclasses
import io

from flask import Blueprint, Request, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..runtime.quote import shorten
from ..services import codec
from ..services.cache import is_valid_key
from ..services.decoders import public_decoder
from ..services.model_runner import INPUT_SIDE
from ..services.uploads import UploadRefused, decode_upload, encode_decoded
from ..services.weights import model_family
from .compression import accepts_gzip, client_has
from .errors import ApiError
from .state import TEXT, app_state
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
        decoded = decode_upload(data, state.config.max_pixels, state.pixel_budget)
        del data  # The decoded pixels are all that is kept while the image waits for the encoder.
        result = encode_decoded(state.encoder, decoded)
    except UploadRefused as error:
        raise ApiError(error.status, error.code, error.message, error.headers) from None
    entry = result.entry
    shape = list(entry.embedding.shape)
    height, width = entry.original_size
    wire = wire_formats(entry.is_sam2)
    fmt = wire.default
    tensors = {"tensors": {n: list(a.shape) for n, a in entry.wire_features().items()}} if entry.is_sam2 else {}
    return jsonify(
        id=result.image_id,
        width=width,
        height=height,
        input_size=list(entry.input_size),
        model_type=state.weights.model_type,
        model_family=model_family(state.weights.model_type),
        weights=state.weights.weights,
        embedding_url=f"/api/embeddings/{result.image_id}?format={fmt}",
        format=fmt,
        dtype=wire.dtype(fmt),
        shape=shape,
        **tensors,
        bytes=wire.size(shape, fmt),
        formats={name: wire.size(shape, name) for name in wire.names},
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
    wire = wire_formats(model_family(state.weights.model_type) != "sam")
    fmt = request.args.get("format", wire.default)
    if fmt not in wire.names:
        raise ApiError(400, "unknown_format", f"format must be one of {', '.join(wire.names)}, not {shorten(fmt)!r}")
    entry = state.encoder.embedding(image_id)
    if entry is None:
        raise ApiError(
            404, "unknown_id", "no embedding with this id (unknown, or evicted from the cache): upload the image again"
        )

    body, gzipped = state.compressed.get(image_id, fmt, accepts_gzip(), lambda: wire.encode(entry, fmt))
    etag = f"{image_id}-v{wire.version}-{fmt}" + ("-gz" if gzipped else "")
    headers = {
        "Cache-Control": IMMUTABLE,
        "ETag": f'"{etag}"',
        "Vary": "Accept-Encoding",
        "X-Embedding-Format": fmt,
        "X-Embedding-Shape": ",".join(str(v) for v in entry.embedding.shape),
        "X-Uncompressed-Length": str(wire.size(entry.embedding.shape, fmt)),
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
    wire = wire_formats(model_family(state.weights.model_type) != "sam")
    return jsonify(
        model_type=state.weights.model_type,
        model_family=model_family(state.weights.model_type),
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
        embedding_formats=list(wire.names),
        default_embedding_format=wire.default,
        ort_version=state.ort_version,
        text=current_app.extensions[TEXT].status() if TEXT in current_app.extensions else {"loaded": False},
    )


@dataclasses.dataclass(frozen=True)
class WireFormats:
    """The embedding formats of one model family (docs/ARCHITECTURE.md): SAM 1's single tensor (version 1) or
    SAM 2's bundle of three (version 2)."""

    version: int
    names: tuple[str, ...]
    default: str
    sam2: bool

    def size(self, shape, fmt: str) -> int:
        return codec.sam2_encoded_size(fmt) if self.sam2 else codec.encoded_size(tuple(shape), fmt)

    def dtype(self, fmt: str) -> str:
        """Value types as web/js/decoder/embedding.js names them ("int8/int8/int8" for a bundle)."""
        if not self.sam2:
            return codec.DTYPES[fmt]
        return "/".join("int8" if t in codec.INT8_LEVELS else codec.DTYPES.get(t, t) for t in codec.SAM2_FORMATS[fmt])

    def encode(self, entry, fmt: str) -> bytes:
        if self.sam2:
            return codec.encode_sam2_features(entry.wire_features(), fmt)
        return codec.encode_embedding(entry.embedding, fmt)


SAM1_WIRE = WireFormats(codec.VERSION, tuple(codec.FORMATS), codec.DEFAULT_FORMAT, sam2=False)
SAM2_WIRE = WireFormats(codec.BUNDLE_VERSION, tuple(codec.SAM2_FORMATS), codec.SAM2_DEFAULT_FORMAT, sam2=True)


def wire_formats(sam2: bool) -> WireFormats:
    return SAM2_WIRE if sam2 else SAM1_WIRE


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
