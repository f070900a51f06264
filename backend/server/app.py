"""The app factory: ``create_app(config=None)`` reads the settings, builds the services, registers blueprints.

Routes live in backend/server/api.py (``/api``), backend/server/everything_routes.py (everything mode) and backend/server/static.py
(the client, ``/healthz``); routes reach the services through backend/server/state.py; errors are
``backend.server.errors.ApiError``. The seams for a shared store or a remote encoder are in backend/services/interfaces.py.

``create_app(config)`` takes setting overrides (see backend/config.py), upper-case Flask keys (``TESTING``),
and, for tests and embedding, ``model`` (a ready ``Sam``, with ``weights_info``), ``encode_batch`` (replaces the
forward pass), ``decoders`` (a ready list instead of exporting) and ``grounder`` (a text grounder for the
annotation tools' pre-annotation, ``backend.integrations.Grounder``).

The annotation tools' protocols (Label Studio, CVAT, Roboflow) are blueprints of backend/integrations/, given the
same encoder, cache and decoding limits as the page.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from flask import Flask

from ..config import Config, ConfigError
from ..integrations import Toolkit, register_integrations
from ..services.cache import EmbeddingCache
from ..services.decoders import choose_decoders, given_decoders
from ..services.encoder import EncoderService
from ..services.everything import EverythingService, resolver_from_encoder, sam2_generator_factory
from ..services.gallery import Gallery
from ..services.memory import PixelBudget
from ..services.model_runner import prepare_model, resolve_device
from ..services.weights import WeightsInfo, load_model, model_family
from ..text.service import TextService
from . import cors
from .api import InMemoryRequest, api
from .compression import BodyCache
from .errors import register_error_handlers
from .everything_routes import register_everything
from .limits import install_rate_limits
from .state import EVERYTHING, SAM, AppState
from .static import isolation_headers, ort_version, static_files, web_files
from .text_routes import register_text

logger = logging.getLogger(__name__)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Builds the app: loads the model (or seeded random weights), starts the encoder, exports decoders."""
    overrides = dict(config or {})
    model = overrides.pop("model", None)
    weights_info = overrides.pop("weights_info", None)
    encode_batch = overrides.pop("encode_batch", None)
    decoders = overrides.pop("decoders", None)
    grounder = overrides.pop("grounder", None)
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
    sam2 = model_family(weights_info.model_type) != "sam"
    device = resolve_device(settings.device)
    if decoders is None:  # Exported from the CPU fp32 model, before it moves to its device.
        offered = choose_decoders(model, weights_info.weights_id, settings.decoder, settings.decoders_dir)
    else:
        offered = given_decoders(decoders, settings.decoder)
    try:
        precision = prepare_model(model, device, settings.precision, cache_dir=settings.data_dir)
    except ValueError as error:  # A path this model family does not have (SAM 2: fp32, bf16, auto).
        raise ConfigError(f"SAM_PRECISION={settings.precision}: {error}") from None
    logger.info("serving %s (%s weights) on %s in %s", weights_info.model_type, weights_info.weights, device, precision)

    store, job_store = _stores(settings)
    image_encoder, model_key = None, weights_info.weights_id
    if settings.ray_address and encode_batch is None:
        image_encoder, model_key = _remote_encoder(settings, weights_info)
    encoder = EncoderService(
        model,
        store,
        settings.resolve_secret(),
        model_key,
        max_batch_size=settings.batch_size,
        max_queue_size=settings.queue_size,
        timeout_s=settings.request_timeout,
        encode_batch=encode_batch,
        image_encoder=image_encoder,
    )
    on_cluster = {}
    if image_encoder is not None:  # Everything jobs run on the cluster too (backend/cluster/cluster_everything.py).
        from ..cluster.cluster_everything import cluster_generator_factory
        from ..cluster.serve_encoder import replica_settings

        on_cluster["generator_factory"] = cluster_generator_factory(
            replica_settings(settings), num_gpus=1 if image_encoder.identity["device"].startswith("cuda") else 0
        )
    if sam2:  # SAM 2's everything mode runs in this process on the cached features (the cluster's is SAM 1's).
        on_cluster["generator_factory"] = sam2_generator_factory
    everything = EverythingService(
        resolver_from_encoder(encoder),
        max_concurrent=settings.everything_jobs,
        max_jobs=settings.everything_max_jobs,
        max_per_client=settings.everything_jobs_per_client,
        store=job_store,
        **on_cluster,
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
        web_files=web_files(),
        pixel_budget=PixelBudget(settings.decode_pixels),
    )

    app.register_blueprint(api)
    register_everything(app, everything)
    text_service = _text_service(settings)
    register_text(app, text_service)
    app.register_blueprint(static_files)
    if grounder is None:
        grounder = _default_grounder(text_service)
    register_integrations(app, Toolkit(settings, encoder, app.extensions[SAM].pixel_budget, grounder))
    install_rate_limits(app, settings)
    register_error_handlers(app)
    app.after_request(isolation_headers)
    cors.init_app(app, settings)
    return app


def shutdown(app: Flask) -> None:
    """Cancels the app's queued and running work (everything jobs stop at their next batch, waiting encodes
    answer 503) so a stopping server exits promptly."""
    app.extensions[EVERYTHING].close()
    app.extensions[SAM].encoder.close()


def _text_service(settings: Config) -> TextService:
    """Text prompts: the detector loads on the first request (a download can take minutes; most sessions never
    type a phrase), and a server without the ``.[text]`` extra answers those requests 501."""

    def load():
        from ..text.weights import load_grounder

        return load_grounder(settings)

    return TextService(load, timeout_s=settings.request_timeout)


def _default_grounder(text_service: TextService):
    """Label Studio's pre-annotation grounds label names through the page's text service (the same detector,
    loaded once), at the default thresholds; None without the ``.[text]`` extra, so it answers that it cannot."""
    if importlib.util.find_spec("transformers") is None:
        return None
    from ..text.grounding import GroundingParameters

    def ground(pixels, phrases):
        return text_service.grounder().ground(pixels, phrases, GroundingParameters())

    return ground


def _stores(settings: Config):
    """The embedding store and job store: this process's (the default), or Redis shared by every host."""
    if not settings.redis_url:
        return EmbeddingCache(settings.cache_bytes, settings.disk_cache_dir, settings.disk_cache_bytes), None
    try:
        from ..cluster import redis_store
    except ImportError:
        raise ConfigError("SAM_REDIS_URL needs redis-py: pip install '.[cluster]'") from None
    client = redis_store.connect(settings.redis_url)
    logger.info("shared state in Redis at %s (TTL %d s)", settings.redis_url, settings.redis_ttl)
    return (
        redis_store.RedisEmbeddingCache(client, settings.redis_ttl),
        redis_store.RedisJobStore(client, settings.redis_ttl, settings.everything_max_jobs),
    )


def _remote_encoder(settings: Config, weights_info: WeightsInfo):
    """SAM_RAY_ADDRESS: the cluster's encoder deployment encodes; image ids use its weights id on every host."""
    try:
        from ..cluster.serve_encoder import RemoteEncoder
    except ImportError:
        raise ConfigError("SAM_RAY_ADDRESS needs Ray Serve: pip install '.[cluster]'") from None
    try:
        remote = RemoteEncoder(
            settings.ray_address, max_in_flight=settings.queue_size, timeout_s=settings.request_timeout
        )
    except Exception as error:
        raise ConfigError(
            f"SAM_RAY_ADDRESS={settings.ray_address}: no encoder deployment answered ({type(error).__name__}: "
            f"{error}); deploy it with `python -m backend deploy-encoder --ray-address ...`"
        ) from None
    identity = remote.identity
    if identity["model_type"] != weights_info.model_type:
        raise ConfigError(
            f"the cluster's encoder runs {identity['model_type']} but this host's decoders are for "
            f"{weights_info.model_type}; set the same SAM_MODEL_TYPE / SAM_CHECKPOINT on both"
        )
    logger.info(
        "encoding on the Ray cluster at %s: %s on %s", settings.ray_address, identity["weights_id"], identity["device"]
    )
    return remote, identity["weights_id"]


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("backend").setLevel(level.upper())
