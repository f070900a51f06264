"""The static client and health: ``/`` (web/), ``/vendor/ort/<file>`` (the installed onnxruntime-web dist),
``/models/<name>.onnx`` (exported decoders), ``/gallery/<name>``, ``/healthz``; and the cross-origin
isolation headers every response carries.

Files are served from an explicit allow-list made when the app starts (``web_files()``: the client's own
files; ``ORT_CLIENT_FILES``: the onnxruntime-web files it loads), looked up by the exact request path: no
path that is not on the list (``/./node_modules/...``, ``/css/../package.json``) reaches the filesystem.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
from pathlib import Path

from flask import Blueprint, Response, current_app, request, send_file, send_from_directory
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.security import safe_join

from ..runtime.quote import shorten
from .compression import COMPRESSIBLE_SUFFIXES, StaticGzip, accepts_gzip, client_has
from .errors import ApiError
from .state import app_state

REPO_ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = REPO_ROOT / "web"
ORT_PACKAGE_DIR = WEB_DIR / "node_modules" / "onnxruntime-web"
ORT_DIST_DIR = ORT_PACKAGE_DIR / "dist"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("text/javascript", ".js")

# What web/ serves: the page, its modules, styles and images (not package.json, READMEs or node_modules).
WEB_SUFFIXES = {".html", ".js", ".mjs", ".css", ".svg", ".png", ".jpg", ".ico", ".webmanifest", ".woff2"}
# The onnxruntime-web files the decoder worker loads (web/js/decoder/decoder-worker.js: the wasm and webgpu entry
# points and the runtimes they import), and the plain bundles for pages that use a script tag.
ORT_CLIENT_FILES = (
    "ort.wasm.min.mjs",
    "ort.webgpu.min.mjs",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
    "ort.min.js",
    "ort.min.mjs",
)

static_files = Blueprint("static_files", __name__)
_STATIC_GZIP = StaticGzip(max_bytes=128 * 1024 * 1024)


def ort_version() -> str | None:
    """The installed onnxruntime-web version, or None when web/node_modules lacks it."""
    try:
        return json.loads((ORT_PACKAGE_DIR / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def web_files() -> frozenset[str]:
    """The client's files as URL paths relative to ``/`` (``index.html``, ``js/page/main.js``, ...)."""
    found = set()
    for folder, subfolders, names in os.walk(WEB_DIR):
        subfolders[:] = [d for d in subfolders if d != "node_modules" and not d.startswith(".")]
        for name in names:
            if os.path.splitext(name)[1].lower() in WEB_SUFFIXES:
                found.add(Path(folder, name).relative_to(WEB_DIR).as_posix())
    return frozenset(found)


def isolation_headers(response: Response) -> Response:
    # Cross-origin isolation makes SharedArrayBuffer (multithreaded WASM) available to the page.
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    response.headers["Cross-Origin-Embedder-Policy"] = "require-corp"
    response.headers["Cross-Origin-Resource-Policy"] = "same-origin"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@static_files.get("/healthz")
def healthz():
    state = app_state()
    cache = state.encoder.cache.stats()
    # A shared store that is unreachable makes this host unable to serve: 503 takes it out of a load balancer.
    healthy = cache.get("status", "ok") == "ok"
    body = {
        "status": "ok" if healthy else "unavailable",
        "model_type": state.weights.model_type,
        "weights": state.weights.weights,
        "pid": os.getpid(),
        "encoder": state.encoder.stats(),
        "cache": cache,
        "decoding": state.pixel_budget.stats(),
    }
    return body, 200 if healthy else 503


@static_files.get("/")
def index():
    return _send(WEB_DIR, "index.html", REVALIDATE)


@static_files.get("/vendor/ort/<path:filename>")
def ort_file(filename: str):
    return _send_ort(filename, REVALIDATE)


@static_files.get("/vendor/ort@<version>/<path:filename>")
def ort_versioned_file(version: str, filename: str):
    installed = app_state().ort_version
    if version != installed:
        raise ApiError(404, "not_found", f"onnxruntime-web {shorten(version)} is not installed here (have {installed})")
    return _send_ort(filename, IMMUTABLE)


@static_files.get("/models/<name>.onnx")
def decoder_file(name: str):
    decoder = next((d for d in app_state().decoders.decoders if d["name"] == name), None)
    if decoder is None:
        raise ApiError(404, "unknown_decoder", f"no decoder named {shorten(name)!r}; see /api/model")
    versioned = request.args.get("v") == decoder["sha256"][:16]
    response = send_file(
        decoder["path"], mimetype="application/octet-stream", conditional=True, etag=decoder["sha256"][:32]
    )
    response.headers["Cache-Control"] = IMMUTABLE if versioned else REVALIDATE
    return response


@static_files.get("/gallery/<name>")
def gallery_file(name: str):
    path = app_state().gallery.path(name)
    if path is None:
        raise ApiError(404, "unknown_image", f"no gallery image named {shorten(name)!r}; see /api/gallery")
    response = send_file(path, conditional=True)
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


@static_files.get("/gallery/<name>/<kind>.jpg")
def gallery_rendition(name: str, kind: str):
    gallery = app_state().gallery
    if gallery.path(name) is None:
        raise ApiError(404, "unknown_image", f"no gallery image named {shorten(name)!r}; see /api/gallery")
    data = gallery.rendition(name, kind)
    if data is None:
        raise ApiError(404, "not_found", f"the gallery image {shorten(name)!r} has no {shorten(kind)!r} rendition")
    response = Response(data, mimetype="image/jpeg")
    response.set_etag(hashlib.sha256(data).hexdigest()[:32])
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response.make_conditional(request)


@static_files.get("/<path:filename>")
def web_file(filename: str):
    if filename.split("/", 1)[0] == "api":
        # This catch-all matched only because no API route takes GET here: say which methods would work.
        adapter = current_app.url_map.bind_to_environ(request.environ)
        methods = set(adapter.allowed_methods(request.path)) - {"GET", "HEAD", "OPTIONS"}
        if methods:
            raise MethodNotAllowed(valid_methods=sorted(methods))
    if filename not in app_state().web_files:
        raise ApiError(404, "not_found", f"/{shorten(filename)} does not exist")
    return _send(WEB_DIR, filename, REVALIDATE)


def _send_ort(filename: str, cache_control: str) -> Response:
    if filename not in ORT_CLIENT_FILES:
        raise ApiError(404, "not_found", f"{shorten(request.path)} is not a file this server offers")
    return _send(ORT_DIST_DIR, filename, cache_control)


def _send(folder: Path, filename: str, cache_control: str) -> Response:
    path = safe_join(str(folder), filename)
    if path is None or not os.path.isfile(path):
        raise ApiError(404, "not_found", f"{shorten(request.path)} does not exist")
    compressible = os.path.splitext(path)[1].lower() in COMPRESSIBLE_SUFFIXES
    if compressible and accepts_gzip():
        stat = os.stat(path)
        packed = _STATIC_GZIP.get(path, stat)
        if packed is not None:
            etag = f"{stat.st_mtime_ns:x}-{stat.st_size:x}-gz"
            headers = {"ETag": f'"{etag}"', "Vary": "Accept-Encoding", "Cache-Control": cache_control}
            if client_has(etag):
                return Response(status=304, headers=headers)
            mimetype = mimetypes.guess_type(path)[0] or "application/octet-stream"
            response = Response(packed, mimetype=mimetype, headers=headers)
            response.headers["Content-Encoding"] = "gzip"
            return response
    try:
        response = send_from_directory(folder, filename, conditional=True, max_age=None)
    except NotFound:
        raise ApiError(404, "not_found", f"{shorten(request.path)} does not exist") from None
    response.headers["Cache-Control"] = cache_control
    if compressible:
        response.headers["Vary"] = "Accept-Encoding"
    return response
