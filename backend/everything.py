"""Everything mode over HTTP: background jobs that run the automatic mask generator on an uploaded image.

    POST /api/images/<image_id>/everything   optional JSON parameters -> 202 {job_id, status_url, events_url}
    GET  /api/everything/<job_id>            {status, progress, message?, result?}
    GET  /api/everything/<job_id>/events     the same as server-sent events, until the job ends

Jobs are cached per (image id, parameters): asking again returns the same job (and its result). At most
``max_concurrent`` jobs run at once, the others wait in order; at most ``max_jobs`` are remembered, the
oldest finished ones are forgotten first. Results hold COCO RLE strings (see backend/sam/amg.py).

Wiring (one line in create_app):
    app.register_blueprint(create_everything_blueprint(resolver_from_encoder(encoder_service)))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from flask import Blueprint, Response, jsonify, request, url_for

logger = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, ERROR = "queued", "running", "done", "error"


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
    """A resolver over ``backend.encoder.EncoderService``'s cached embeddings (and optionally kept pixels)."""

    def resolve(image_id: str) -> EverythingSource | None:
        entry = encoder_service.embedding(image_id)
        if entry is None:
            return None
        image = image_store(image_id) if image_store is not None else None
        return EverythingSource(
            model=encoder_service.model,
            embedding=entry.embedding,
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
        raise BadParameters(f"unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(PARAMETERS)}")
    params = {}
    for name, spec in PARAMETERS.items():
        value = raw.get(name, spec.default)
        # JSON true/false are ints to Python; reject them, and non-numbers, explicitly.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadParameters(f"{name} must be a number, got {json.dumps(value)}")
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


@dataclasses.dataclass
class EverythingJob:
    job_id: str
    image_id: str
    params: dict[str, Any]
    source: EverythingSource | None
    status: str = QUEUED
    progress: float = 0.0
    message: str | None = None
    result: dict[str, Any] | None = None
    created: float = dataclasses.field(default_factory=time.time)
    elapsed_ms: float | None = None

    def to_json(self, with_result: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "job_id": self.job_id,
            "image_id": self.image_id,
            "status": self.status,
            "progress": round(self.progress, 4),
            "params": self.params,
        }
        if self.message is not None:
            out["message"] = self.message
        if self.elapsed_ms is not None:
            out["elapsed_ms"] = round(self.elapsed_ms, 1)
        if with_result and self.result is not None:
            out["result"] = self.result
        return out

    @property
    def finished(self) -> bool:
        return self.status in (DONE, ERROR)


class UnknownImage(LookupError):
    pass


class ImageUnavailable(RuntimeError):
    pass


class TooManyJobs(RuntimeError):
    pass


GeneratorFactory = Callable[[torch.nn.Module, dict[str, Any]], Any]


def default_generator_factory(model: torch.nn.Module, params: dict[str, Any]):
    from .sam.automatic import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(model, output_mode="coco_rle", **params)


class EverythingService:
    """Runs everything-mode jobs on a small thread pool and remembers them.

    ``resolve`` maps image ids to sources; ``max_concurrent`` jobs run at once; ``max_jobs`` bounds the
    remembered jobs (queued + running + finished); ``generator_factory(model, params)`` builds the mask
    generator (replaceable in tests).
    """

    def __init__(
        self,
        resolve: Resolver,
        *,
        max_concurrent: int = 1,
        max_jobs: int = 32,
        generator_factory: GeneratorFactory = default_generator_factory,
    ) -> None:
        self.resolve = resolve
        self.max_concurrent = max(1, int(max_concurrent))
        self.max_jobs = max(1, int(max_jobs))
        self.generator_factory = generator_factory
        self._executor = ThreadPoolExecutor(max_workers=self.max_concurrent, thread_name_prefix="sam-everything")
        self._jobs: OrderedDict[str, EverythingJob] = OrderedDict()
        self._by_key: dict[tuple[str, tuple], str] = {}
        self._changed = threading.Condition()

    def submit(self, image_id: str, params: dict[str, Any]) -> tuple[EverythingJob, bool]:
        """The job for (image_id, validated params): the cached one if any, else a new queued one.

        Returns (job, created). Raises UnknownImage, ImageUnavailable (crops need pixels the server did not
        keep) or TooManyJobs (every remembered job is still queued or running).
        """
        key = (image_id, tuple(sorted(params.items())))
        with self._changed:
            existing = self._jobs.get(self._by_key.get(key, ""))
            if existing is not None and existing.status != ERROR:
                return existing, False
        source = self.resolve(image_id)
        if source is None:
            raise UnknownImage(image_id)
        if params.get("crop_n_layers", 0) > 0 and source.image is None:
            raise ImageUnavailable(
                "crop_n_layers > 0 needs the image's pixels, which this server does not keep; use crop_n_layers 0"
            )
        with self._changed:
            existing = self._jobs.get(self._by_key.get(key, ""))
            if existing is not None and existing.status != ERROR:
                return existing, False
            self._make_room()
            job = EverythingJob(job_id=uuid.uuid4().hex, image_id=image_id, params=dict(params), source=source)
            self._jobs[job.job_id] = job
            self._by_key[key] = job.job_id
        self._executor.submit(self._run, job)
        return job, True

    def get(self, job_id: str) -> EverythingJob | None:
        with self._changed:
            return self._jobs.get(job_id)

    def wait_for_change(self, job: EverythingJob, seen: tuple[str, float], timeout: float) -> None:
        """Blocks until the job's (status, progress) differs from ``seen`` or ``timeout`` seconds pass."""
        with self._changed:
            self._changed.wait_for(lambda: (job.status, job.progress) != seen, timeout=timeout)

    def stats(self) -> dict[str, Any]:
        with self._changed:
            counts = dict.fromkeys((QUEUED, RUNNING, DONE, ERROR), 0)
            for job in self._jobs.values():
                counts[job.status] += 1
        return {"max_concurrent": self.max_concurrent, "max_jobs": self.max_jobs, **counts}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _make_room(self) -> None:
        # Called with the lock held: forget the oldest finished jobs until one more fits.
        while len(self._jobs) >= self.max_jobs:
            oldest = next((j for j in self._jobs.values() if j.finished), None)
            if oldest is None:
                raise TooManyJobs(f"{len(self._jobs)} everything jobs are already queued or running; try again later")
            del self._jobs[oldest.job_id]
            self._by_key = {k: v for k, v in self._by_key.items() if v != oldest.job_id}

    def _update(self, job: EverythingJob, **changes: Any) -> None:
        with self._changed:
            for name, value in changes.items():
                setattr(job, name, value)
            self._changed.notify_all()

    def _run(self, job: EverythingJob) -> None:
        started = time.perf_counter()
        self._update(job, status=RUNNING)
        source = job.source
        try:
            generator = self.generator_factory(source.model, job.params)
            h, w = source.original_size
            image = source.image
            if image is None:
                # Layer 0 only needs the image's size: its embedding stands in for the pixels.
                image = np.broadcast_to(np.zeros((1, 1, 3), dtype=np.uint8), (h, w, 3))
            embedding = torch.as_tensor(np.asarray(source.embedding, dtype=np.float32))
            if embedding.ndim == 3:
                embedding = embedding[None]
            annotations = generator.generate(
                image, image_embedding=embedding, progress=lambda p: self._update(job, progress=float(p))
            )
            result = {
                "image_id": job.image_id,
                "width": int(w),
                "height": int(h),
                "annotations": [_annotation_json(a) for a in annotations],
            }
            self._update(
                job,
                status=DONE,
                progress=1.0,
                result=result,
                source=None,
                elapsed_ms=(time.perf_counter() - started) * 1000,
            )
        except Exception as exc:  # a failed job reports why instead of taking the worker down
            logger.exception("everything job %s failed", job.job_id)
            self._update(
                job,
                status=ERROR,
                message=f"mask generation failed: {exc}",
                source=None,
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


# --- HTTP ---------------------------------------------------------------------------------------------------


def _error(status: int, code: str, message: str, **headers: str):
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    response.headers.update(headers)
    return response


def create_everything_blueprint(
    resolve: Resolver,
    *,
    max_concurrent: int = 1,
    max_jobs: int = 32,
    generator_factory: GeneratorFactory = default_generator_factory,
    sse_keepalive_s: float = 15.0,
) -> Blueprint:
    """The everything-mode routes (full /api paths); the service is ``blueprint.service`` and, once
    registered, ``app.extensions["everything"]``."""
    service = EverythingService(
        resolve, max_concurrent=max_concurrent, max_jobs=max_jobs, generator_factory=generator_factory
    )
    bp = Blueprint("everything", __name__)
    bp.service = service

    @bp.record_once
    def _remember(state) -> None:
        state.app.extensions["everything"] = service

    @bp.post("/api/images/<image_id>/everything")
    def start(image_id: str):
        raw = None
        if request.get_data(cache=True):
            raw = request.get_json(force=True, silent=True)
            if raw is None:
                return _error(400, "bad_json", "the request body must be JSON (an object of parameters) or empty")
        try:
            params = validate_parameters(raw)
            job, created = service.submit(image_id, params)
        except BadParameters as exc:
            return _error(400, "bad_parameters", str(exc))
        except UnknownImage:
            return _error(404, "unknown_image", f"no encoded image with id {image_id!r}; upload it again")
        except ImageUnavailable as exc:
            return _error(409, "image_unavailable", str(exc))
        except TooManyJobs as exc:
            return _error(503, "busy", str(exc), **{"Retry-After": "5"})
        body = {
            "job_id": job.job_id,
            "status": job.status,
            "cached": not created,
            "status_url": url_for("everything.status", job_id=job.job_id),
            "events_url": url_for("everything.events", job_id=job.job_id),
        }
        return jsonify(body), 202

    @bp.get("/api/everything/<job_id>")
    def status(job_id: str):
        job = service.get(job_id)
        if job is None:
            return _error(404, "unknown_job", f"no everything job {job_id!r} (it may have expired)")
        return jsonify(job.to_json())

    @bp.get("/api/everything/<job_id>/events")
    def events(job_id: str):
        job = service.get(job_id)
        if job is None:
            return _error(404, "unknown_job", f"no everything job {job_id!r} (it may have expired)")

        def stream() -> Iterator[str]:
            seen: tuple[str, float] = ("", -1.0)
            while True:
                current = (job.status, job.progress)
                if current != seen:
                    seen = current
                    if job.finished:
                        yield f"event: {job.status}\ndata: {json.dumps(job.to_json())}\n\n"
                        return
                    yield f"event: progress\ndata: {json.dumps(job.to_json(with_result=False))}\n\n"
                else:
                    yield ": keep-alive\n\n"
                service.wait_for_change(job, seen, timeout=sse_keepalive_s)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return Response(stream(), mimetype="text/event-stream", headers=headers)

    return bp
