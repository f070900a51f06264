"""Everything mode: background jobs that run the automatic mask generator on an uploaded image's embedding.

Jobs are cached per (image id, parameters): asking again returns the same job (and its result). At most
``max_concurrent`` jobs run at once, the others wait in order; the job records live in a ``JobStore``
(``backend.services.jobs.MemoryJobStore`` by default). Results hold COCO RLE strings (see backend/sam/amg.py). The
routes are in backend/server/everything_routes.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..runtime.quote import shorten
from .interfaces import JobStore
from .jobs import CANCELLED, DONE, ERROR, FINISHED, QUEUED, RUNNING, EverythingJob, MemoryJobStore, TooManyJobs

logger = logging.getLogger(__name__)

__all__ = ["EverythingService", "EverythingSource", "TooManyJobs", "resolver_from_encoder", "validate_parameters"]


@dataclasses.dataclass
class EverythingSource:
    """What a job needs about an uploaded image.

    ``embedding`` float32 [256, 64, 64] or [1, 256, 64, 64]; ``original_size`` and ``input_size`` are (H, W)
    of the upload and after resize-longest-side. ``image`` (HxWx3 uint8 RGB) is only needed for crop layers
    (crop_n_layers > 0), which encode tiles of the image; without it such requests are refused.
    """

    model: torch.nn.Module
    embedding: Any
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    image: np.ndarray | None = None


# A resolver maps an image id to its source, or None when the id is unknown (or its embedding evicted).
Resolver = Callable[[str], EverythingSource | None]


def resolver_from_encoder(
    encoder_service: Any, image_store: Callable[[str], np.ndarray | None] | None = None
) -> Resolver:
    """A resolver over ``backend.services.encoder.EncoderService``'s cached embeddings (and optionally kept pixels)."""

    def resolve(image_id: str) -> EverythingSource | None:
        entry = encoder_service.embedding(image_id)
        if entry is None:
            return None
        image = image_store(image_id) if image_store is not None else None
        return EverythingSource(
            model=encoder_service.model,
            embedding=entry.predictor_features() if entry.is_sam2 else entry.embedding,
            original_size=tuple(entry.original_size),
            input_size=tuple(entry.input_size),
            image=image,
        )

    return resolve


# --- parameters -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Param:
    kind: type
    default: Any
    low: float
    high: float


# Bounded so that one request cannot take the server for hours or exhaust memory.
PARAMETERS: dict[str, _Param] = {
    "points_per_side": _Param(int, 32, 1, 64),
    "pred_iou_thresh": _Param(float, 0.88, 0.0, 1.0),
    "stability_score_thresh": _Param(float, 0.95, 0.0, 1.0),
    "stability_score_offset": _Param(float, 1.0, 0.0, 10.0),
    "box_nms_thresh": _Param(float, 0.7, 0.0, 1.0),
    "min_mask_region_area": _Param(int, 0, 0, 1_000_000),
    "crop_n_layers": _Param(int, 0, 0, 2),
}


class BadParameters(ValueError):
    """A request parameter is missing its type, out of bounds or unknown."""


def validate_parameters(raw: Any) -> dict[str, Any]:
    """Request JSON -> every parameter with its value (defaults filled in); raises BadParameters."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadParameters("the request body must be a JSON object of parameters")
    unknown = sorted(set(raw) - set(PARAMETERS))
    if unknown:
        raise BadParameters(f"unknown parameter(s) {shorten(', '.join(unknown))}; allowed: {', '.join(PARAMETERS)}")
    params = {}
    for name, spec in PARAMETERS.items():
        value = raw.get(name, spec.default)
        # JSON true/false are ints to Python; reject them, and non-numbers, explicitly.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadParameters(f"{name} must be a number, got {shorten(json.dumps(value))}")
        if spec.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise BadParameters(f"{name} must be a whole number, got {value}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise BadParameters(f"{name} must be a finite number")
        if not spec.low <= value <= spec.high:
            raise BadParameters(f"{name} must be between {spec.low:g} and {spec.high:g}, got {value:g}")
        params[name] = value
    return params


# --- jobs ------------------------------------------------------------------------------------------------


class UnknownImage(LookupError):
    pass


class ImageUnavailable(RuntimeError):
    pass


class ClientBusy(RuntimeError):
    """This client already has as many unfinished jobs as one client may."""


class JobCancelled(Exception):
    """Raised inside a running job, at its next batch boundary, once the job was cancelled."""


GeneratorFactory = Callable[[torch.nn.Module, dict[str, Any]], Any]


def default_generator_factory(model: torch.nn.Module, params: dict[str, Any]):
    from ..sam.automatic import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(model, output_mode="coco_rle", **params)


class _Sam2Everything:
    """``SAM2AutomaticMaskGenerator`` behind SamAutomaticMaskGenerator's ``generate(image, image_embedding,
    progress)``: ``image_embedding`` is SAM 2's cached features (``CachedEmbedding.predictor_features``)."""

    def __init__(self, generator) -> None:
        self.generator = generator

    def generate(self, image: np.ndarray, image_embedding=None, progress=None) -> list[dict[str, Any]]:
        annotations = self.generator.generate(image, features=image_embedding)
        if progress is not None:
            progress(1.0)
        return annotations


def sam2_generator_factory(model: torch.nn.Module, params: dict[str, Any]):
    """Everything mode on SAM 2 / 2.1: backend.sam2's generator, on the features the upload cached."""
    from ..sam2 import SAM2AutomaticMaskGenerator

    return _Sam2Everything(SAM2AutomaticMaskGenerator(model, output_mode="coco_rle", **params))


class EverythingService:
    """Runs everything-mode jobs on ``max_concurrent`` worker threads; their records live in ``store``.

    ``resolve`` maps image ids to sources; ``max_concurrent`` jobs run at once; ``store`` keeps the job
    records (default: a ``MemoryJobStore`` of ``max_jobs``); ``generator_factory(model, params)`` builds the
    mask generator (replaceable in tests); ``max_per_client`` bounds one client's unfinished jobs.
    """

    def __init__(
        self,
        resolve: Resolver,
        *,
        max_concurrent: int = 1,
        max_jobs: int = 32,
        generator_factory: GeneratorFactory = default_generator_factory,
        store: JobStore | None = None,
        max_per_client: int | None = None,
    ) -> None:
        self.resolve = resolve
        self.max_per_client = max_per_client
        self.max_concurrent = max(1, int(max_concurrent))
        self.store = store if store is not None else MemoryJobStore(max_jobs)
        self.generator_factory = generator_factory
        # Daemon threads, not a ThreadPoolExecutor: a stopping process must not wait for a running job's
        # batch to end (the interpreter joins executor threads at exit).
        self._queue: queue.Queue[tuple[str, EverythingSource] | None] = queue.Queue()
        for index in range(self.max_concurrent):
            threading.Thread(target=self._work, name=f"sam-everything-{index}", daemon=True).start()

    def submit(
        self, image_id: str, params: dict[str, Any], client: str | None = None, image: np.ndarray | None = None
    ) -> tuple[EverythingJob, bool]:
        """The job for (image_id, validated params): the cached one if any, else a new queued one.

        ``image`` (HxWx3 uint8, the pixels of image_id, e.g. sent with the request) serves crop layers when
        the resolver keeps no pixels; it is held for the job's run only. Returns (job, created). Raises
        UnknownImage, ImageUnavailable (crops need pixels the server did not keep and none were given),
        ClientBusy (``client`` has ``max_per_client`` unfinished jobs) or TooManyJobs (every remembered job is
        still queued or running).
        """
        key = (image_id, tuple(sorted(params.items())))
        existing = self.store.find(key)
        if existing is not None and existing.status not in (ERROR, CANCELLED):
            return existing, False
        source = self.resolve(image_id)
        if source is None:
            raise UnknownImage(image_id)
        if source.image is None and image is not None:
            source = dataclasses.replace(source, image=image)
        if params.get("crop_n_layers", 0) > 0 and source.image is None:
            raise ImageUnavailable(
                "crop_n_layers > 0 needs the image's pixels, which this server does not keep; use crop_n_layers 0"
            )
        existing = self.store.find(key)
        if existing is not None and existing.status not in (ERROR, CANCELLED):
            return existing, False
        if self.max_per_client is not None and client is not None:
            mine = sum(1 for job in self.store.jobs() if job.client == client and not job.finished)
            if mine >= self.max_per_client:
                raise ClientBusy(
                    f"you have {mine} everything jobs queued or running (at most {self.max_per_client} at once); "
                    "wait for one to finish or cancel one"
                )
        job = EverythingJob(job_id=uuid.uuid4().hex, image_id=image_id, params=dict(params), client=client)
        self.store.add(job, key)
        self._queue.put((job.job_id, source))
        return job, True

    def get(self, job_id: str) -> EverythingJob | None:
        return self.store.get(job_id)

    def wait_for_change(self, job_id: str, seen: tuple[str, float], timeout: float) -> None:
        """Blocks until the job's (status, progress) differs from ``seen`` or ``timeout`` seconds pass."""
        self.store.wait_for_change(job_id, seen, timeout)

    def stats(self) -> dict[str, Any]:
        counts = dict.fromkeys((QUEUED, RUNNING, DONE, ERROR, CANCELLED), 0)
        for job in self.store.jobs():
            counts[job.status] = counts.get(job.status, 0) + 1
        return {"max_concurrent": self.max_concurrent, **counts}

    def cancel(self, job_id: str) -> EverythingJob | None:
        """Cancels a queued or running job (a running one stops at its next batch boundary); a finished job
        stays as it is. Returns the job, or None when unknown."""
        self.store.update(job_id, unless=FINISHED, status=CANCELLED, message="cancelled before it finished")
        return self.store.get(job_id)

    def close(self) -> None:
        """Shutdown: every unfinished job is cancelled (running ones stop at their next batch), none waits."""
        for job in self.store.jobs():
            if not job.finished:
                self.cancel(job.job_id)
        for _ in range(self.max_concurrent):
            self._queue.put(None)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            self._run(*item)

    def _progress(self, job_id: str, fraction: float) -> None:
        job = self.store.get(job_id)
        if job is None or job.status == CANCELLED:
            raise JobCancelled(job_id)
        # A generator that starts later (a cluster task) reports its first progress once it runs.
        self.store.update(job_id, unless=FINISHED, status=RUNNING, message=None, progress=float(fraction))

    def _waiting(self, job_id: str, reason: str) -> None:
        """The job's generator cannot start yet (e.g. no room on the cluster): the job shows queued and why."""
        job = self.store.get(job_id)
        if job is None or job.status == CANCELLED:
            raise JobCancelled(job_id)
        self.store.update(job_id, unless=FINISHED, status=QUEUED, message=reason)

    def _stream(self, job_id: str, added: list[tuple[int, dict[str, Any]]], removed: list[int]) -> None:
        job = self.store.get(job_id)
        if job is None or job.status == CANCELLED:
            raise JobCancelled(job_id)
        update = {
            "masks": [{"id": int(mask_id), **_annotation_json(annotation)} for mask_id, annotation in added],
            "retracted": [int(mask_id) for mask_id in removed],
        }
        self.store.update(job_id, unless=FINISHED, updates=[*job.updates, update])

    def _run(self, job_id: str, source: EverythingSource) -> None:
        started = time.perf_counter()
        job = self.store.get(job_id)
        if job is None or job.finished:  # Cancelled while it waited.
            return
        try:
            generator = self.generator_factory(source.model, job.params)
            # A generator with ``starts_later`` (a cluster task) stays queued until its first progress report and
            # says through ``waiting(reason)`` why it has not started; a local one runs from here on.
            starts_later = bool(getattr(generator, "starts_later", False))
            if not starts_later and not self.store.update(job_id, unless=FINISHED, status=RUNNING):
                return
            extra = {"waiting": lambda reason: self._waiting(job_id, reason)} if starts_later else {}
            h, w = source.original_size
            image = source.image
            if image is None:
                # Layer 0 only needs the image's size: its embedding stands in for the pixels.
                image = np.broadcast_to(np.zeros((1, 1, 3), dtype=np.uint8), (h, w, 3))
            embedding = source.embedding
            if not isinstance(embedding, dict):  # SAM 2's features are a dict, as set_features takes them.
                embedding = torch.as_tensor(np.asarray(embedding, dtype=np.float32))
                if embedding.ndim == 3:
                    embedding = embedding[None]
            streaming = {}
            if "on_update" in inspect.signature(generator.generate).parameters:
                streaming["on_update"] = lambda added, removed: self._stream(job_id, added, removed)
            annotations = generator.generate(
                image,
                image_embedding=embedding,
                progress=lambda p: self._progress(job_id, p),
                **extra,
                **streaming,
            )
            result = {
                "image_id": job.image_id,
                "width": int(w),
                "height": int(h),
                "annotations": [_annotation_json(a) for a in annotations],
            }
            elapsed_ms = (time.perf_counter() - started) * 1000
            self.store.update(job_id, unless=FINISHED, status=DONE, progress=1.0, result=result, elapsed_ms=elapsed_ms)
        except JobCancelled:
            logger.info("everything job %s cancelled", job_id)
        except Exception as exc:  # a failed job reports why instead of taking the worker down
            logger.exception("everything job %s failed", job_id)
            self.store.update(
                job_id,
                unless=FINISHED,
                status=ERROR,
                message=f"mask generation failed: {exc}",
                elapsed_ms=(time.perf_counter() - started) * 1000,
            )


def _annotation_json(ann: dict[str, Any]) -> dict[str, Any]:
    segmentation = ann["segmentation"]
    counts = segmentation["counts"]
    return {
        "segmentation": {
            "size": [int(s) for s in segmentation["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
        },
        "area": int(ann["area"]),
        "bbox": [int(v) for v in ann["bbox"]],
        "predicted_iou": float(ann["predicted_iou"]),
        "stability_score": float(ann["stability_score"]),
        "point_coords": [[float(x), float(y)] for x, y in ann["point_coords"]],
        "crop_box": [int(v) for v in ann["crop_box"]],
    }
