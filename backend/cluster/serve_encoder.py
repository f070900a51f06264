"""The image encoder as a Ray Serve deployment (``python -m backend deploy-encoder``) and the web host's client.

    python -m backend deploy-encoder --ray-address ADDR [--replicas N | --autoscale MIN:MAX]
        [--gpus-per-replica G] [--threads T]

Each replica loads one model exactly as a web host does (``SAM_MODEL_TYPE``, ``SAM_CHECKPOINT``, ... from the
deploying shell, passed to the replicas) and encodes with ``@serve.batch``: the local encoder's batch size
(``SAM_BATCH_SIZE``) and batch window. Ray restarts a replica that dies. A web host with ``SAM_RAY_ADDRESS``
sends each image to the deployment (``RemoteEncoder``, the ``ImageEncoder`` seam of backend/services/interfaces.py in
place of the local ``BatchQueue``), so its store and timeouts stay as they are, and image ids use the
deployment's weights id, the same on every host.

Back pressure: each replica takes ``max_ongoing_requests`` (2 batches' worth) at a time, each deployment
handle queues ``max_queued_requests`` more, and each web host has at most ``SAM_QUEUE_SIZE`` images in
flight; beyond that, and when a replica died under a request and the one retry failed too, the upload
answers 503 with ``Retry-After`` (``EncoderBusy``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
from ray import serve

from ..config import Config
from ..services.interfaces import EncodedImage, EncoderBusy, EncoderClosed
from ..services.model_runner import encode_images, prepare_model, resolve_device

logger = logging.getLogger(__name__)

APP_NAME = "sam-encoder"
DEPLOYMENT_NAME = "SamEncoder"
# The local encoder's window: how long a batch waits for company after its first image.
BATCH_WAIT_S = 0.005
# Settings a replica takes from the deploying shell (the replicas' own environment is the cluster's).
REPLICA_SETTINGS = (
    "model_type",
    "checkpoint",
    "weights_dir",
    "data_dir",
    "allow_download",
    "device",
    "precision",
    "batch_size",
)


# A replica's answer for one image: embedding, input_size, batch size, encode ms, high-res maps (SAM 2).
Encoded = tuple[np.ndarray, tuple[int, int], int, float, tuple[np.ndarray, ...]]


@serve.deployment(name=DEPLOYMENT_NAME)
class SamEncoder:
    """One model per replica; ``__call__(image)`` -> (embedding float32 [256, 64, 64], input_size, batch, ms,
    high_res_feats): SAM 2's two high-resolution maps (feat_s0 [32, 256, 256], feat_s1 [64, 128, 128]), () for SAM 1.
    """

    def __init__(self, settings: dict[str, Any], threads: int) -> None:
        import torch

        from ..services.weights import load_model

        torch.set_num_threads(max(1, int(threads)))
        config = Config.from_env(overrides=settings)
        model, self.weights = load_model(config)
        self.device = resolve_device(config.device)
        self.precision = prepare_model(model, self.device, config.precision, cache_dir=config.data_dir)
        self.model = model
        self.encode_batch.set_max_batch_size(config.batch_size)
        self.batches = 0
        logger.info("SamEncoder replica: %s on %s in %s", self.weights.weights_id, self.device, self.precision)

    def identity(self) -> dict[str, Any]:
        """What a web host checks and keys its image ids with."""
        return {
            "weights_id": self.weights.weights_id,
            "model_type": self.weights.model_type,
            "weights": self.weights.weights,
            "device": str(self.device),
            "precision": self.precision,
        }

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=BATCH_WAIT_S)
    async def encode_batch(self, images: list[np.ndarray]) -> list[Encoded]:
        started = time.perf_counter()
        # In a thread, so the replica's event loop keeps collecting the next batch meanwhile.
        encoded = await asyncio.get_running_loop().run_in_executor(None, encode_images, self.model, images)
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.batches += 1
        # encode_images gives (embedding, input_size) for SAM 1, plus the high-res maps for SAM 2.
        return [
            (item[0], item[1], len(images), elapsed_ms, tuple(item[2]) if len(item) > 2 else ()) for item in encoded
        ]

    async def __call__(self, image: np.ndarray) -> Encoded:
        return await self.encode_batch(image)


def build_app(
    settings: dict[str, Any],
    *,
    replicas: int | None = 1,
    autoscale: tuple[int, int] | None = None,
    gpus_per_replica: float = 0,
    threads: int = 1,
    max_queued: int = 16,
):
    """The Serve application: a fixed number of replicas, or autoscaling between MIN and MAX."""
    batch = int(settings.get("batch_size") or Config.batch_size)
    options: dict[str, Any] = dict(
        ray_actor_options={"num_cpus": threads, "num_gpus": gpus_per_replica},
        # Two batches per replica in flight; the rest wait in the callers' queues (bounded by max_queued).
        max_ongoing_requests=2 * batch,
        max_queued_requests=max_queued,
        health_check_period_s=5,
    )
    if autoscale is not None:
        low, high = autoscale
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": batch,
        }
        options["num_replicas"] = "auto"
    else:
        options["num_replicas"] = replicas
    return SamEncoder.options(**options).bind(settings, threads)


def app_from_env(args: dict[str, Any] | None = None):
    """The application from the ``SAM_*`` environment (a Serve config's ``import_path``, e.g. KubeRay's RayService).

    ``args`` (the config's ``args``): ``threads`` and ``gpus_per_replica``; replica counts and autoscaling
    come from the config's deployment options.
    """
    args = dict(args or {})
    config = Config.from_env()
    return build_app(
        replica_settings(config),
        gpus_per_replica=float(args.get("gpus_per_replica", 0)),
        threads=int(args.get("threads", 1)),
        max_queued=config.queue_size,
    )


def replica_settings(config: Config) -> dict[str, Any]:
    return {name: getattr(config, name) for name in REPLICA_SETTINGS}


def deploy(address: str, app, *, wait_s: float = 600.0) -> dict[str, Any]:
    """Connects to the cluster, (re)deploys the application and waits until it answers; returns its identity."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, namespace="sam", log_to_driver=False, configure_logging=False)
    serve.start(proxy_location="Disabled")
    handle = serve.run(app, name=APP_NAME, route_prefix=None, blocking=False)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return handle.identity.remote().result(timeout_s=max(1.0, deadline - time.monotonic()))
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


class RemoteEncoder:
    """The web host's ``ImageEncoder``: each submitted image is one request to the deployment.

    Every image is its own request, so the replicas batch across all web hosts. ``identity`` is the
    deployment's (weights id, model type, device). At most ``max_in_flight`` images at once (else
    ``EncoderBusy``); a refusal by the deployment, or a replica lost twice under the same image, fails the
    image's future with ``EncoderBusy`` (503 + Retry-After).
    """

    def __init__(
        self, address: str, *, max_in_flight: int = 8, timeout_s: float = 120.0, connect_timeout_s: float = 120.0
    ) -> None:
        import concurrent.futures
        import threading

        import ray

        if not ray.is_initialized():
            ray.init(address=address, namespace="sam", log_to_driver=False, configure_logging=False)
        self.timeout_s = float(timeout_s)
        self.max_in_flight = max(1, int(max_in_flight))
        self.handle = serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)
        self.identity: dict[str, Any] = self.handle.identity.remote().result(timeout_s=connect_timeout_s)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="sam-remote")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._closed = False
        self.images_encoded = 0
        self.refused = 0
        self._seconds_per_image = 1.0

    def submit(self, pixels: np.ndarray):
        with self._lock:
            if self._closed:
                raise EncoderClosed("the encoder is shut down")
            if self._in_flight >= self.max_in_flight:
                self.refused += 1
                raise EncoderBusy(
                    f"{self._in_flight} images are already with the encoder cluster; try again shortly",
                    self.retry_after(),
                )
            self._in_flight += 1
        future = self._pool.submit(self._encode, np.ascontiguousarray(pixels))
        future.add_done_callback(self._done)
        return future

    def retry_after(self) -> int:
        return max(1, round((self._in_flight + 1) * self._seconds_per_image / self.max_in_flight))

    def stats(self) -> dict[str, Any]:
        return {
            "remote": APP_NAME,
            "queue_depth": self._in_flight,
            "queue_size": self.max_in_flight,
            "images_encoded": self.images_encoded,
            "refused": self.refused,
            **{f"cluster_{k}": v for k, v in self.identity.items()},
        }

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _done(self, _future) -> None:
        with self._lock:
            self._in_flight -= 1

    def _encode(self, pixels: np.ndarray) -> EncodedImage:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        lost = (RayActorError, ActorDiedError, ActorUnavailableError, DeploymentUnavailableError)
        started = time.perf_counter()
        for attempt in range(2):
            try:
                embedding, input_size, batch, encode_ms, high_res_feats = self.handle.remote(pixels).result(
                    timeout_s=self.timeout_s
                )
                break
            except BackPressureError:
                raise EncoderBusy("the encoder cluster is at capacity; try again shortly", self.retry_after()) from None
            except lost as error:
                if attempt == 1:
                    raise EncoderBusy(
                        f"the encoder replica was lost ({type(error).__name__}); try again", self.retry_after()
                    ) from None
                logger.warning("encoder replica lost (%s); sending the image once more", type(error).__name__)
        self.images_encoded += 1
        self._seconds_per_image = 0.7 * self._seconds_per_image + 0.3 * (time.perf_counter() - started)
        return EncodedImage(
            embedding=embedding,
            input_size=(int(input_size[0]), int(input_size[1])),
            encode_ms=float(encode_ms),
            batch_size=int(batch),
            high_res_feats=tuple(high_res_feats),
        )
