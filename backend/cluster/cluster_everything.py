"""Everything-mode jobs on the Ray cluster (web hosts with ``SAM_RAY_ADDRESS``): a generator factory for
``EverythingService`` whose ``generate`` runs as a Ray task.

The web host's job thread only waits: the task (one CPU, or one GPU when the cluster has GPUs) loads the
model once per Ray worker process, runs ``SamAutomaticMaskGenerator`` on the embedding the host already has,
and streams its progress and masks back (a streaming generator task), so polls and server-sent events on
any host see it move (the job store is Redis). A cancelled job cancels the task at its next progress report.

The job shows ``queued`` until the task runs (its first report); while Ray cannot place it (the cluster's CPUs
held by encoder replicas, batch actors, other jobs), the job's message says so (ray_pool.placement_report).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np
import ray

from ..config import Config
from .ray_pool import ResourceRequest, placement_report

# How long a task may take to start before the job says why it has not (then re-checked at this pace).
START_CHECK_S = 2.0

_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()


def cluster_generator_factory(settings: dict[str, Any], num_gpus: float = 0):
    """``EverythingService(generator_factory=...)``: jobs run on the cluster with the model of ``settings``."""

    def factory(_model, params: dict[str, Any]) -> ClusterGenerator:
        return ClusterGenerator(settings, params, num_gpus)

    return factory


class ClusterGenerator:
    """``generate(image, image_embedding, progress, waiting)`` as SamAutomaticMaskGenerator's, computed by a Ray
    task; ``waiting(reason)`` is called while the task cannot start (``starts_later``: the job stays queued)."""

    starts_later = True

    def __init__(self, settings: dict[str, Any], params: dict[str, Any], num_gpus: float) -> None:
        self.settings, self.params, self.num_gpus = settings, params, num_gpus

    def generate(
        self, image: np.ndarray, image_embedding=None, progress=None, waiting=None, on_update=None
    ) -> list[dict[str, Any]]:
        embedding = None if image_embedding is None else np.asarray(image_embedding, dtype=np.float32)
        # Layer 0 needs only the image's size; the pixels travel only when crops need them.
        pixels = np.ascontiguousarray(image) if self.params.get("crop_n_layers", 0) > 0 else None
        request = ResourceRequest(cpus=1, gpus=self.num_gpus)
        stream = _generate_task.options(num_cpus=request.cpus, num_gpus=request.gpus).remote(
            self.settings, self.params, pixels, tuple(image.shape), embedding
        )
        try:
            self._wait_for_start(stream, request, waiting)
            for ref in stream:
                kind, value = ray.get(ref)
                if kind == "progress":
                    if progress is not None:
                        progress(value)  # May raise (a cancelled job): the finally cancels the task.
                elif kind == "update":
                    if on_update is not None:
                        on_update(*value)
                else:
                    return value
        finally:
            if not _finished(stream):
                ray.cancel(stream)
        raise RuntimeError("the everything task ended without a result")

    @staticmethod
    def _wait_for_start(stream, request: ResourceRequest, waiting) -> None:
        """Returns once the task has reported (it runs); meanwhile tells ``waiting`` why it does not."""
        check_at = time.monotonic() + START_CHECK_S
        while not ray.wait([stream], timeout=0.5)[0]:
            if waiting is None or time.monotonic() < check_at:
                continue
            reason = placement_report(request, what="everything task") or "waiting for the cluster to start the task"
            waiting(reason)  # Raises JobCancelled for a job cancelled meanwhile (the caller cancels the task).
            check_at = time.monotonic() + START_CHECK_S


def _finished(stream) -> bool:
    try:
        return stream.is_finished()
    except Exception:
        return True


@ray.remote(num_returns="streaming", max_retries=1)
def _generate_task(settings, params, pixels, shape, embedding):
    import torch

    from ..sam.automatic import SamAutomaticMaskGenerator

    yield ("progress", 0.0)  # Placed and running: the job leaves `queued`.
    model = _model(settings)
    generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **params)
    image = pixels if pixels is not None else np.broadcast_to(np.zeros((1, 1, 3), dtype=np.uint8), shape)
    tensor = None
    if embedding is not None:
        tensor = torch.as_tensor(embedding)
        tensor = (tensor[None] if tensor.ndim == 3 else tensor).to(model.device)
    updates: queue.Queue = queue.Queue()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["masks"] = generator.generate(
                image,
                image_embedding=tensor,
                progress=lambda fraction: updates.put(("progress", float(fraction))),
                on_update=lambda added, removed: updates.put(("update", (added, removed))),
            )
        except BaseException as error:  # Reported to the web host through the stream.
            outcome["error"] = error
        finally:
            updates.put(None)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    while (item := updates.get()) is not None:
        yield item
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    yield ("result", outcome["masks"])


def _model(settings: dict[str, Any]):
    """The Ray worker process's model for ``settings``, loaded once (as a web host loads it)."""
    from ..services.model_runner import prepare_model, resolve_device
    from ..services.weights import load_model

    key = tuple(sorted(settings.items()))
    with _MODELS_LOCK:
        if key not in _MODELS:
            config = Config.from_env(environ={}, overrides=settings)
            model, _ = load_model(config)
            prepare_model(model, resolve_device(config.device), config.precision, cache_dir=config.data_dir)
            _MODELS[key] = model
        return _MODELS[key]
