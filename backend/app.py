"""The Flask app: ``create_app(config=None)``, the ``/api`` blueprint, the static client with COOP/COEP.

Routes (docs/ARCHITECTURE.md): ``POST /api/images``, ``GET /api/embeddings/<id>``, ``GET /api/model``,
``GET /api/gallery``, ``GET /healthz``, and static files: ``/`` (web/), ``/vendor/ort/<file>`` (the installed
onnxruntime-web dist), ``/models/<name>.onnx`` (exported decoders), ``/gallery/<name>``.

Other blueprints reach the shared state with ``sam_state()``: ``sam_state().encoder.embedding(image_id)`` or
``.predictor_for(image_id)`` (see backend/encoder.py), ``.config``, ``.weights``.

``create_app(config)`` takes setting overrides (see backend/config.py), upper-case Flask keys (``TESTING``),
and, for tests and embedding, ``model`` (a ready ``Sam``, with ``weights_info``), ``encode_batch`` (replaces the
forward pass) and ``decoders`` (a ready list instead of exporting).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import logging
import mimetypes
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Request, Response, current_app, jsonify, request, send_file, send_from_directory
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.security import safe_join

from . import codec
from .cache import EmbeddingCache, is_valid_key
from .config import DECODER_CHOICES, Config
from .encoder import EncoderBusy, EncoderClosed, EncoderService, RetryLater, prepare_model, resolve_device
from .everything import create_everything_blueprint, resolver_from_encoder
from .gallery import Gallery
from .images import ImageError, decode_image
from .weights import WeightsInfo, load_model

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
WEB_DIR = REPO_ROOT / "web"
ORT_PACKAGE_DIR = WEB_DIR / "node_modules" / "onnxruntime-web"
ORT_DIST_DIR = ORT_PACKAGE_DIR / "dist"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# gzip only when it saves at least this fraction: below that the CPU time and the client's lost progress
# information (Content-Length then counts compressed bytes) are not worth it.
MIN_GZIP_SAVING = 0.10

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("text/javascript", ".js")


class InMemoryRequest(Request):
    """Keeps multipart file parts in memory (Werkzeug spools parts over 500 KB to a temporary file); the body
    is already bounded by MAX_CONTENT_LENGTH, and uploads are never written to disk."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


@dataclasses.dataclass
class SamState:
    """Everything the routes share: one per app (so one model per worker process)."""

    config: Config
    weights: WeightsInfo
    encoder: EncoderService
    decoders: list[dict]
    default_decoder: str | None
    decoder_error: str | None
    device: str
    precision: str
    gallery: Gallery
    ort_version: str | None
    compressed: _BodyCache


def sam_state() -> SamState:
    return current_app.extensions["sam"]


class ApiError(Exception):
    """Answered as JSON ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Builds the app: loads the model (or seeded random weights), starts the encoder, exports decoders."""
    overrides = dict(config or {})
    model = overrides.pop("model", None)
    weights_info = overrides.pop("weights_info", None)
    encode_batch = overrides.pop("encode_batch", None)
    decoders = overrides.pop("decoders", None)
    flask_keys = {k: v for k, v in overrides.items() if k.isupper() and not k.startswith("SAM_") and k != "PORT"}
    settings = Config.from_env(overrides=overrides)
    _configure_logging(settings.log_level)

    app = Flask(__name__, static_folder=None)
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.config.update(flask_keys)

    if model is None:
        model, weights_info = load_model(settings)
    elif weights_info is None:
        weights_info = WeightsInfo(settings.canonical_model_type, "real", "injected", None, "model given to create_app")
    device = resolve_device(settings.device)
    decoder_error = None
    if decoders is None:  # Exported from the CPU fp32 model, before it moves to its device.
        decoders, decoder_error = _prepare_decoders(model, weights_info, settings)
    precision = prepare_model(model, device, settings.precision)
    logger.info("serving %s (%s weights) on %s in %s", weights_info.model_type, weights_info.weights, device, precision)

    encoder = EncoderService(
        model,
        EmbeddingCache(settings.cache_bytes, settings.disk_cache_dir, settings.disk_cache_bytes),
        settings.resolve_secret(),
        weights_info.weights_id,
        max_batch_size=settings.batch_size,
        max_queue_size=settings.queue_size,
        timeout_s=settings.request_timeout,
        encode_batch=encode_batch,
    )
    app.extensions["sam"] = SamState(
        config=settings,
        weights=weights_info,
        encoder=encoder,
        decoders=decoders,
        default_decoder=_default_decoder(decoders, settings.decoder),
        decoder_error=decoder_error,
        device=str(device),
        precision=precision,
        gallery=Gallery(settings.gallery_dir),
        ort_version=_ort_version(),
        compressed=_BodyCache(max_bytes=64 * 1024 * 1024),
    )

    app.register_blueprint(api)
    app.register_blueprint(
        create_everything_blueprint(
            resolver_from_encoder(encoder),
            max_concurrent=settings.everything_jobs,
            max_jobs=settings.everything_max_jobs,
        )
    )
    app.register_blueprint(static_files)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.after_request(_isolation_headers)
    return app


# The /api blueprint -------------------------------------------------------------------------------------------

api = Blueprint("api", __name__, url_prefix="/api")


@api.post("/images")
def upload_image():
    state = sam_state()
    data = _upload_bytes()
    try:
        decoded = decode_image(data, state.config.max_pixels)
    except ImageError as error:
        raise ApiError(error.status, error.code, error.message) from None
    del data
    try:
        result = state.encoder.encode(decoded.pixels)
    except RetryLater as error:
        code = "encoder_busy" if isinstance(error, EncoderBusy) else "encoder_timeout"
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
    state = sam_state()
    if not is_valid_key(image_id):
        raise ApiError(400, "malformed_id", "image ids are 32 lowercase hexadecimal characters")
    fmt = request.args.get("format", codec.DEFAULT_FORMAT)
    if fmt not in codec.FORMATS:
        raise ApiError(400, "unknown_format", f"format must be one of {', '.join(codec.FORMATS)}, not {fmt!r}")
    entry = state.encoder.embedding(image_id)
    if entry is None:
        raise ApiError(
            404, "unknown_id", "no embedding with this id (unknown, or evicted from the cache): upload the image again"
        )

    body, gzipped = state.compressed.get(
        image_id, fmt, _accepts_gzip(), lambda: codec.encode_embedding(entry.embedding, fmt)
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
    if _client_has(etag):
        return Response(status=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    response = Response(body, status=200, mimetype="application/octet-stream", headers=headers)
    response.headers["Content-Length"] = str(len(body))
    return response


@api.get("/model")
def model_info():
    state = sam_state()
    return jsonify(
        model_type=state.weights.model_type,
        weights=state.weights.weights,
        weights_message=state.weights.message,
        image_size=1024,
        mask_threshold=0.0,
        device=state.device,
        precision=state.precision,
        decoders=[_public_decoder(d) for d in state.decoders],
        default_decoder=state.default_decoder,
        decoder_error=state.decoder_error,
        embedding_formats=list(codec.FORMATS),
        default_embedding_format=codec.DEFAULT_FORMAT,
        ort_version=state.ort_version,
    )


@api.get("/gallery")
def gallery_listing():
    return jsonify(sam_state().gallery.listing())


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


# Static files ---------------------------------------------------------------------------------------------------

static_files = Blueprint("static_files", __name__)


@static_files.get("/healthz")
def healthz():
    state = sam_state()
    cache = state.encoder.cache
    return jsonify(
        status="ok",
        model_type=state.weights.model_type,
        weights=state.weights.weights,
        pid=os.getpid(),
        encoder=state.encoder.stats(),
        cache={"entries": len(cache), "bytes": cache.bytes_used, "max_bytes": cache.max_bytes},
    )


@static_files.get("/")
def index():
    return _send(WEB_DIR, "index.html", REVALIDATE)


@static_files.get("/vendor/ort/<path:filename>")
def ort_file(filename: str):
    return _send(ORT_DIST_DIR, filename, REVALIDATE)


@static_files.get("/vendor/ort@<version>/<path:filename>")
def ort_versioned_file(version: str, filename: str):
    if version != sam_state().ort_version:
        raise ApiError(
            404, "not_found", f"onnxruntime-web {version} is not installed here (have {sam_state().ort_version})"
        )
    return _send(ORT_DIST_DIR, filename, IMMUTABLE)


@static_files.get("/models/<name>.onnx")
def decoder_file(name: str):
    decoder = next((d for d in sam_state().decoders if d["name"] == name), None)
    if decoder is None:
        raise ApiError(404, "unknown_decoder", f"no decoder named {name!r}; see /api/model")
    versioned = request.args.get("v") == decoder["sha256"][:16]
    response = send_file(
        decoder["path"], mimetype="application/octet-stream", conditional=True, etag=decoder["sha256"][:32]
    )
    response.headers["Cache-Control"] = IMMUTABLE if versioned else REVALIDATE
    return response


@static_files.get("/gallery/<name>")
def gallery_file(name: str):
    path = sam_state().gallery.path(name)
    if path is None:
        raise ApiError(404, "unknown_image", f"no gallery image named {name!r}; see /api/gallery")
    response = send_file(path, conditional=True)
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


@static_files.get("/<path:filename>")
def web_file(filename: str):
    top = filename.split("/", 1)[0]
    if top == "api":
        # This catch-all matched only because no API route takes GET here: say which methods would work.
        adapter = current_app.url_map.bind_to_environ(request.environ)
        methods = set(adapter.allowed_methods(request.path)) - {"GET", "HEAD", "OPTIONS"}
        if methods:
            raise MethodNotAllowed(valid_methods=sorted(methods))
    if top in ("node_modules", "api"):
        raise ApiError(404, "not_found", f"/{filename} does not exist")
    return _send(WEB_DIR, filename, REVALIDATE)


def _send(folder: Path, filename: str, cache_control: str) -> Response:
    path = safe_join(str(folder), filename)
    if path is None or not os.path.isfile(path):
        raise ApiError(404, "not_found", f"{request.path} does not exist")
    compressible = os.path.splitext(path)[1].lower() in COMPRESSIBLE_SUFFIXES
    if compressible and _accepts_gzip():
        stat = os.stat(path)
        packed = _STATIC_GZIP.get(path, stat)
        if packed is not None:
            etag = f"{stat.st_mtime_ns:x}-{stat.st_size:x}-gz"
            headers = {"ETag": f'"{etag}"', "Vary": "Accept-Encoding", "Cache-Control": cache_control}
            if _client_has(etag):
                return Response(status=304, headers=headers)
            mimetype = mimetypes.guess_type(path)[0] or "application/octet-stream"
            response = Response(packed, mimetype=mimetype, headers=headers)
            response.headers["Content-Encoding"] = "gzip"
            return response
    try:
        response = send_from_directory(folder, filename, conditional=True, max_age=None)
    except NotFound:
        raise ApiError(404, "not_found", f"{request.path} does not exist") from None
    response.headers["Cache-Control"] = cache_control
    if compressible:
        response.headers["Vary"] = "Accept-Encoding"
    return response


# Errors and headers ---------------------------------------------------------------------------------------------


def _api_error(error: ApiError):
    response = jsonify(error=error.code, message=error.message)
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def _http_error(error: HTTPException):
    if error.code == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = f"the request body is larger than the limit of {limit:,} bytes (SAM_MAX_UPLOAD_BYTES)"
    elif error.code == 404:
        message = f"{request.path} does not exist"
    else:
        message = error.description or error.name
    response = jsonify(error=_HTTP_CODES.get(error.code, error.name.lower().replace(" ", "_")), message=message)
    response.status_code = error.code or 500
    if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _unexpected_error(error: Exception):
    logger.exception("unhandled error on %s %s", request.method, request.path)
    response = jsonify(error="internal_error", message="the server failed on this request; it has been logged")
    response.status_code = 500
    return response


def _isolation_headers(response: Response) -> Response:
    # Cross-origin isolation makes SharedArrayBuffer (multithreaded WASM) available to the page.
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Cross-Origin-Embedder-Policy"] = "require-corp"
    response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# Helpers --------------------------------------------------------------------------------------------------------


class _GzipCache:
    """gzip copies of bodies under a key, least recently used dropped beyond ``max_bytes``. A body that gzip
    would not shrink enough is remembered as None, so it is not compressed again."""

    def __init__(self, max_bytes: int, compresslevel: int) -> None:
        self.max_bytes = max_bytes
        self.compresslevel = compresslevel
        self._bodies: OrderedDict[Any, bytes | None] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def _lookup(self, key: Any) -> tuple[bool, bytes | None]:
        """(whether the key is known, its gzip copy or None)."""
        with self._lock:
            if key not in self._bodies:
                return False, None
            self._bodies.move_to_end(key)
            return True, self._bodies[key]

    def _compress(self, key: Any, raw: bytes) -> bytes | None:
        packed = gzip.compress(raw, compresslevel=self.compresslevel, mtime=0)
        if len(packed) > (1 - MIN_GZIP_SAVING) * len(raw):
            packed = None
        with self._lock:
            self._bodies[key] = packed
            self._bytes += len(packed) if packed else 0
            while self._bytes > self.max_bytes and self._bodies:
                _, dropped = self._bodies.popitem(last=False)
                self._bytes -= len(dropped) if dropped else 0
        return packed


class _BodyCache(_GzipCache):
    """Recently served embedding bodies that gzip shrank enough, so they are compressed once, not per request."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, compresslevel=1)  # Level 6 saves 0.3% more at twice the time.

    def get(self, image_id: str, fmt: str, accept_gzip: bool, make_body) -> tuple[bytes, bool]:
        if not accept_gzip:
            return make_body(), False
        key = (image_id, fmt)
        known, packed = self._lookup(key)
        if packed is not None:
            return packed, True
        body = make_body()
        if not known:
            packed = self._compress(key, body)
        return (packed, True) if packed is not None else (body, False)


class _StaticGzip(_GzipCache):
    """gzip copies of static files (the 14 MB onnxruntime WASM shrinks to a quarter), made on first request."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, compresslevel=6)
        self._file_locks: dict[str, threading.Lock] = {}

    def get(self, path: str, stat: os.stat_result) -> bytes | None:
        key = (path, stat.st_mtime_ns, stat.st_size)
        known, packed = self._lookup(key)
        if known:
            return packed
        with self._lock:
            file_lock = self._file_locks.setdefault(path, threading.Lock())
        with file_lock:  # One thread compresses a given file; the others wait for its result.
            known, packed = self._lookup(key)
            if known:
                return packed
            with open(path, "rb") as file:
                return self._compress(key, file.read())


COMPRESSIBLE_SUFFIXES = {".wasm", ".mjs", ".js", ".css", ".html", ".json", ".svg", ".map", ".txt"}
_STATIC_GZIP = _StaticGzip(max_bytes=128 * 1024 * 1024)


def _accepts_gzip() -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "").lower()


def _client_has(etag: str) -> bool:
    """Whether the request's If-None-Match lists ``etag`` (weak or strong)."""
    header = request.headers.get("If-None-Match", "")
    return etag in [tag.strip().removeprefix("W/").strip('"') for tag in header.split(",") if tag.strip()]


def _public_decoder(decoder: dict) -> dict:
    return {
        "name": decoder["name"],
        "url": f"/models/{decoder['name']}.onnx?v={decoder['sha256'][:16]}",
        "bytes": decoder["bytes"],
        "sha256": decoder["sha256"],
        "interface": decoder["interface"],
        "quantized": decoder["quantized"],
    }


def _prepare_decoders(model, weights: WeightsInfo, settings: Config) -> tuple[list[dict], str | None]:
    custom = None if settings.decoder in DECODER_CHOICES else Path(settings.decoder)
    try:
        from .decoders import prepare_decoders

        try:
            return prepare_decoders(model, weights.weights_id, settings.decoders_dir, custom_decoder=custom), None
        except Exception as error:
            if custom is None:
                raise
            # A broken custom file must not take the built-in decoders down with it.
            logger.error("SAM_DECODER=%s cannot be used: %s", custom, error)
            decoders = prepare_decoders(model, weights.weights_id, settings.decoders_dir)
            return decoders, f"SAM_DECODER={custom} cannot be used ({error}); the built-in decoders are offered"
    except Exception as error:  # The API (uploads, embeddings) still works; the page shows the reason.
        logger.exception("could not prepare the ONNX decoders")
        return [], f"the ONNX decoders could not be prepared: {error}"


def _default_decoder(decoders: list[dict], choice: str) -> str | None:
    names = [d["name"] for d in decoders]
    if choice in names:
        return choice
    if choice not in DECODER_CHOICES:  # A custom file: the entry built from it.
        wanted = os.path.realpath(choice)
        for decoder in decoders:
            if decoder["name"] == "custom" or os.path.realpath(str(decoder["path"])) == wanted:
                return decoder["name"]
    if names:
        logger.warning("SAM_DECODER=%s is not available; the client will use %s", choice, names[0])
        return names[0]
    return None


def _ort_version() -> str | None:
    try:
        return json.loads((ORT_PACKAGE_DIR / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("backend").setLevel(level.upper())
