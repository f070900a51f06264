"""The app factory: ``create_app(config=None)`` reads the settings, builds the services, registers blueprints.

Routes live in backend/api.py (``/api``), backend/everything_routes.py (everything mode) and backend/static.py
(the client, ``/healthz``); routes reach the services through backend/state.py; errors are
``backend.errors.ApiError``. The seams for a shared store or a remote encoder are in backend/interfaces.py.

``create_app(config)`` takes setting overrides (see backend/config.py), upper-case Flask keys (``TESTING``),
and, for tests and embedding, ``model`` (a ready ``Sam``, with ``weights_info``), ``encode_batch`` (replaces the
forward pass) and ``decoders`` (a ready list instead of exporting).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from . import cors
from .api import InMemoryRequest, api
from .cache import EmbeddingCache
from .compression import BodyCache
from .config import Config
from .decoders import choose_decoders, given_decoders
from .encoder import EncoderService
from .errors import register_error_handlers
from .everything import EverythingService, resolver_from_encoder
from .everything_routes import register_everything
from .gallery import Gallery
from .model_runner import prepare_model, resolve_device
from .state import SAM, AppState
from .static import isolation_headers, ort_version, static_files
from .weights import WeightsInfo, load_model

logger = logging.getLogger(__name__)


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
    if decoders is None:  # Exported from the CPU fp32 model, before it moves to its device.
        offered = choose_decoders(model, weights_info.weights_id, settings.decoder, settings.decoders_dir)
    else:
        offered = given_decoders(decoders, settings.decoder)
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
    everything = EverythingService(
        resolver_from_encoder(encoder), max_concurrent=settings.everything_jobs, max_jobs=settings.everything_max_jobs
    )
    app.extensions[SAM] = AppState(
        config=settings,
        weights=weights_info,
        encoder=encoder,
        decoders=offered,
        device=str(device),
        precision=precision,
        gallery=Gallery(settings.gallery_dir),
        ort_version=ort_version(),
        compressed=BodyCache(max_bytes=64 * 1024 * 1024),
    )

    app.register_blueprint(api)
    register_everything(app, everything)
    app.register_blueprint(static_files)
    register_error_handlers(app)
    app.after_request(isolation_headers)
    cors.init_app(app, settings)
    return app


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("backend").setLevel(level.upper())
