"""Cross-origin access for embedding the app in other web tools: CORS, CORP and the ``/embed`` page.

``SAM_CORS_ORIGINS`` names the origins whose pages may call ``/api/*`` and load the embeddable files (the
``<sam-segmenter>`` module at ``/embed/sam-segmenter.js``, the client modules it imports from ``/js/``, the
decoders at ``/models/``, onnxruntime-web at ``/vendor/ort/``). ``SAM_EMBED_ORIGINS`` names the origins whose
pages may frame ``/embed`` and drive it with ``postMessage`` (the page reads the list from
``/embed/origins.json``). Credentials are never allowed cross-origin: no cookie or HTTP auth is ever honoured
for another origin's page, so ``Access-Control-Allow-Credentials`` is never sent.

When either list is set ("embedding is on"), the embeddable resources carry
``Cross-Origin-Resource-Policy: cross-origin`` so that a cross-origin-isolated host (COOP + COEP require-corp)
may load them; every other response (the app's own page) keeps ``same-origin``.

``init_app(app, settings)`` installs it all; see docs/embedding.md.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, jsonify, redirect, request, send_from_directory

from ..config import Config

EMBED_DIR = Path(__file__).resolve().parents[2] / "web" / "embed"
EMBEDDABLE_PREFIXES = ("/api/", "/embed/", "/js/", "/models/", "/vendor/ort/", "/vendor/ort@")
ALLOWED_METHODS = "GET, HEAD, POST"
# Range and If-Range: an embedding page resumes a dropped download of the decoder model where it stopped
# (web/js/resumable-download.js), which needs Accept-Ranges and Content-Range readable too.
ALLOWED_HEADERS = "Accept, Content-Type, If-None-Match, Range, If-Range"
EXPOSED_HEADERS = (
    "Content-Length, Content-Encoding, ETag, Retry-After, X-Uncompressed-Length, X-Embedding-Format, X-Embedding-Shape, "
    "Accept-Ranges, Content-Range"
)
PREFLIGHT_MAX_AGE_S = 600


class CrossOriginPolicy:
    """Which origins may read the embeddable resources, and the headers that say so."""

    def __init__(self, cors_origins: tuple[str, ...], embed_origins: tuple[str, ...]) -> None:
        self.cors_origins = cors_origins
        self.embed_origins = embed_origins
        self.any_origin = cors_origins == ("*",)
        self.embedding_on = bool(cors_origins or embed_origins)

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin.lower() in self.cors_origins

    def preflight(self) -> Response | None:
        """Answers a CORS preflight (``OPTIONS`` + ``Access-Control-Request-Method``) on an embeddable path."""
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = request.headers.get("Origin")
        if not origin or not is_embeddable(request.path):
            return None
        if not self.allows(origin):
            response = jsonify(
                error="origin_not_allowed",
                message=f"this server does not accept cross-origin requests from {origin}; "
                "its operator can add the origin to SAM_CORS_ORIGINS",
            )
            response.status_code = 403
            return response
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            # Chromium asks before a public page may reach a server on a private address (a local app).
            response.headers["Access-Control-Allow-Private-Network"] = "true"
        return response

    def add_headers(self, response: Response) -> Response:
        path = request.path
        if path == "/embed" or path == "/embed/":
            response.headers["Content-Security-Policy"] = "frame-ancestors " + self._frame_ancestors()
        if not is_embeddable(path) or not self.embedding_on:
            return response
        response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
        if not self.cors_origins:
            return response
        # The answer depends on the Origin header (unless any origin is allowed): shared caches must key on it.
        if not self.any_origin:
            response.vary.add("Origin")
        origin = request.headers.get("Origin")
        if origin and self.allows(origin):
            response.headers["Access-Control-Allow-Origin"] = "*" if self.any_origin else origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            if request.method == "OPTIONS":
                response.vary.update(("Access-Control-Request-Method", "Access-Control-Request-Headers"))
        response.headers.pop("Access-Control-Allow-Credentials", None)
        return response

    def _frame_ancestors(self) -> str:
        if self.embed_origins == ("*",):
            return "*"
        return " ".join(("'self'", *self.embed_origins))


def is_embeddable(path: str) -> bool:
    return path == "/embed" or path.startswith(EMBEDDABLE_PREFIXES)


embed_pages = Blueprint("embed_pages", __name__)


@embed_pages.get("/embed")
def embed_page():
    """The iframe page: the element full-size with the postMessage bridge (web/embed/index.html)."""
    response = send_from_directory(EMBED_DIR, "index.html", conditional=True, max_age=None)
    response.headers["Cache-Control"] = "no-cache"
    return response


@embed_pages.get("/embed/")
def embed_page_slash():
    # The page's relative links are written for /embed; keep the query (?image=...).
    query = request.query_string.decode("latin-1")
    return redirect("../embed" + (f"?{query}" if query else ""), code=308)


@embed_pages.get("/embed/origins.json")
def embed_origins():
    """The origins whose messages the iframe page obeys (``["*"]`` for any)."""
    policy: CrossOriginPolicy = current_app.extensions["sam-cross-origin"]
    response = jsonify(embed_origins=list(policy.embed_origins))
    response.headers["Cache-Control"] = "no-cache"
    return response


def init_app(app: Flask, settings: Config) -> None:
    """Installs the preflight answer, the headers and the ``/embed`` page on ``app``."""
    policy = CrossOriginPolicy(settings.cors_origin_list, settings.embed_origin_list)
    app.extensions["sam-cross-origin"] = policy
    app.before_request(policy.preflight)
    # First in the list = run last (Flask runs after_request hooks in reverse order of registration), so the
    # app's own `Cross-Origin-Resource-Policy: same-origin` is relaxed here, wherever that hook is registered.
    app.after_request_funcs.setdefault(None, []).insert(0, policy.add_headers)
    app.register_blueprint(embed_pages)
