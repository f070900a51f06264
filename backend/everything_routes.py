"""The everything-mode routes (full /api paths), over the ``EverythingService`` registered with the app.

POST /api/images/<image_id>/everything   optional JSON parameters -> 202 {job_id, status_url, events_url}
GET  /api/everything/<job_id>            {status, progress, message?, result?}
GET  /api/everything/<job_id>/events     the same as server-sent events, until the job ends
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, jsonify, request, url_for

from .errors import ApiError, register_error_handlers, shorten
from .everything import (
    BadParameters,
    EverythingService,
    GeneratorFactory,
    ImageUnavailable,
    Resolver,
    TooManyJobs,
    UnknownImage,
    default_generator_factory,
    validate_parameters,
)
from .state import EVERYTHING, everything_service

everything = Blueprint("everything", __name__)
SSE_KEEPALIVE_S = 15.0


def register_everything(app: Flask, service: EverythingService) -> None:
    """Serves ``service``'s jobs from ``app``."""
    app.extensions[EVERYTHING] = service
    app.register_blueprint(everything)


def create_everything_blueprint(
    resolve: Resolver,
    *,
    max_concurrent: int = 1,
    max_jobs: int = 32,
    generator_factory: GeneratorFactory = default_generator_factory,
) -> Blueprint:
    """A blueprint that brings its own ``EverythingService`` (``blueprint.service``), for an app that serves
    everything mode alone (tests, embedding in another app); ``create_app`` uses ``register_everything``."""
    service = EverythingService(
        resolve, max_concurrent=max_concurrent, max_jobs=max_jobs, generator_factory=generator_factory
    )
    wrapper = Blueprint("everything_alone", __name__)
    wrapper.service = service

    @wrapper.record_once
    def _register(setup) -> None:
        setup.app.extensions[EVERYTHING] = service
        register_error_handlers(setup.app)
        setup.app.register_blueprint(everything)

    return wrapper


def _unknown_job(job_id: str) -> ApiError:
    return ApiError(404, "unknown_job", f"no everything job {shorten(job_id)!r} (it may have expired)")


@everything.post("/api/images/<image_id>/everything")
def start(image_id: str):
    raw = None
    if request.get_data(cache=True):
        raw = request.get_json(force=True, silent=True)
        if raw is None:
            raise ApiError(400, "bad_json", "the request body must be JSON (an object of parameters) or empty")
    try:
        params = validate_parameters(raw)
        job, created = everything_service().submit(image_id, params)
    except BadParameters as exc:
        raise ApiError(400, "bad_parameters", str(exc)) from None
    except UnknownImage:
        raise ApiError(
            404, "unknown_image", f"no encoded image with id {shorten(image_id)!r}; upload it again"
        ) from None
    except ImageUnavailable as exc:
        raise ApiError(409, "image_unavailable", str(exc)) from None
    except TooManyJobs as exc:
        raise ApiError(503, "busy", str(exc), {"Retry-After": "5"}) from None
    body = {
        "job_id": job.job_id,
        "status": job.status,
        "cached": not created,
        "status_url": url_for("everything.status", job_id=job.job_id),
        "events_url": url_for("everything.events", job_id=job.job_id),
    }
    return jsonify(body), 202


@everything.get("/api/everything/<job_id>")
def status(job_id: str):
    job = everything_service().get(job_id)
    if job is None:
        raise _unknown_job(job_id)
    return jsonify(job.to_json())


@everything.get("/api/everything/<job_id>/events")
def events(job_id: str):
    service = everything_service()
    if service.get(job_id) is None:
        raise _unknown_job(job_id)

    def stream() -> Iterator[str]:
        seen: tuple[str, float] = ("", -1.0)
        while True:
            job = service.get(job_id)
            if job is None:  # Forgotten meanwhile (the store made room).
                return
            current = (job.status, job.progress)
            if current != seen:
                seen = current
                if job.finished:
                    yield f"event: {job.status}\ndata: {json.dumps(job.to_json())}\n\n"
                    return
                yield f"event: progress\ndata: {json.dumps(job.to_json(with_result=False))}\n\n"
            else:
                yield ": keep-alive\n\n"
            service.wait_for_change(job_id, seen, timeout=SSE_KEEPALIVE_S)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(stream(), mimetype="text/event-stream", headers=headers)
