"""The everything-mode routes (full /api paths), over the ``EverythingService`` registered with the app.

POST /api/images/<image_id>/everything   optional JSON parameters -> 202 {job_id, status_url, events_url};
                                         or multipart {parameters: JSON, image: the uploaded file} when
                                         crop layers need the pixels (the server keeps none after encoding)
GET  /api/everything/<job_id>            {status, progress, message?, result?}
GET  /api/everything/<job_id>/events     server-sent events until the job ends: "progress" {status, progress},
                                         "masks" {masks: [annotation + id], retracted: [id]} as batches of
                                         points are decoded (applied in order they leave exactly the final
                                         annotations), then "done" (with the result), "error" or "cancelled"
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, current_app, jsonify, request, url_for

from ..runtime.quote import shorten
from ..services.everything import (
    BadParameters,
    ClientBusy,
    EverythingService,
    GeneratorFactory,
    ImageUnavailable,
    Resolver,
    TooManyJobs,
    UnknownImage,
    default_generator_factory,
    validate_parameters,
)
from ..services.images import ImageError, decode_image
from .errors import ApiError, register_error_handlers
from .limits import client_address
from .state import EVERYTHING, SAM, everything_service

everything = Blueprint("everything", __name__)
SSE_KEEPALIVE_S = 15.0
# The parameters are seven numbers: a body longer than this is not a parameter object.
MAX_PARAMETERS_BYTES = 4096


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


# A refused body up to this size is still read to its end, so the connection stays usable (see _drain_body).
DRAIN_LIMIT_BYTES = 2 * 1024 * 1024


def _parameters_json():
    """The request's JSON parameters (None for an empty body); anything else, too long (more than
    ``MAX_PARAMETERS_BYTES``) or too deeply nested for the parser, is a 400."""
    if (request.content_length or 0) > MAX_PARAMETERS_BYTES:
        _drain_body()
        raise _bad_json()
    body = request.stream.read(MAX_PARAMETERS_BYTES + 1)
    if len(body) > MAX_PARAMETERS_BYTES:
        _drain_body()
        raise _bad_json()
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes.
        raise _bad_json() from None


def _drain_body(limit: int = DRAIN_LIMIT_BYTES) -> None:
    """Reads (and drops) what is left of a refused body, up to ``limit``: answering before the body is read makes
    gunicorn close the connection under the proxy's feet, which the front then reports as a 502."""
    left = limit
    while left > 0:
        chunk = request.stream.read(min(left, 64 * 1024))
        if not chunk:
            return
        left -= len(chunk)


def _multipart_parameters():
    """The JSON of a multipart request's 'parameters' field (None when absent), bounded like a JSON body."""
    text = request.form.get("parameters") or ""
    if len(text.encode()) > MAX_PARAMETERS_BYTES:
        raise _bad_json()
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise _bad_json() from None


def _bad_json() -> ApiError:
    return ApiError(
        400,
        "bad_json",
        f"the request body must be JSON (an object of parameters, at most {MAX_PARAMETERS_BYTES:,} bytes) or empty",
    )


def _unknown_job(job_id: str) -> ApiError:
    return ApiError(404, "unknown_job", f"no everything job {shorten(job_id)!r} (it may have expired)")


def _pixels_sent_with_the_job(image_id: str):
    """The image's pixels from a multipart job request (decoded like an upload), checked to be the image
    ``image_id`` names; they live as long as the job, never stored."""
    upload = request.files.get("image")
    if upload is None:
        raise ApiError(400, "missing_image", "a multipart everything request needs the image in a field named 'image'")
    state = current_app.extensions.get(SAM)
    if state is None:  # an app serving everything mode alone has no decoder of uploads
        raise ApiError(409, "image_unavailable", "this server cannot take the image with the job")
    try:
        pixels = decode_image(upload.read(), state.config.max_pixels).pixels
    except ImageError as error:
        raise ApiError(error.status, error.code, error.message) from None
    if state.encoder.image_id(pixels) != image_id:
        raise ApiError(400, "image_mismatch", f"the image sent is not the one with id {shorten(image_id)!r}")
    return pixels


@everything.post("/api/images/<image_id>/everything")
def start(image_id: str):
    multipart = request.mimetype == "multipart/form-data"
    raw = _multipart_parameters() if multipart else _parameters_json()
    try:
        params = validate_parameters(raw)
        pixels = _pixels_sent_with_the_job(image_id) if multipart and params.get("crop_n_layers", 0) > 0 else None
        job, created = everything_service().submit(image_id, params, client=client_address(), image=pixels)
    except BadParameters as exc:
        raise ApiError(400, "bad_parameters", str(exc)) from None
    except UnknownImage:
        raise ApiError(
            404, "unknown_image", f"no encoded image with id {shorten(image_id)!r}; upload it again"
        ) from None
    except ImageUnavailable as exc:
        raise ApiError(409, "image_unavailable", str(exc)) from None
    except ClientBusy as exc:
        raise ApiError(429, "too_many_jobs", str(exc), {"Retry-After": "10"}) from None
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


@everything.delete("/api/everything/<job_id>")
def cancel(job_id: str):
    job = everything_service().cancel(job_id)
    if job is None:
        raise _unknown_job(job_id)
    return jsonify(job.to_json(with_result=False))


@everything.get("/api/everything/<job_id>/events")
def events(job_id: str):
    service = everything_service()
    if service.get(job_id) is None:
        raise _unknown_job(job_id)

    def stream() -> Iterator[str]:
        seen: tuple[str, float, str | None] = ("", -1.0, None)
        sent = 0  # updates sent
        while True:
            job = service.get(job_id)
            if job is None:  # Forgotten meanwhile (the store made room).
                return
            for update in job.updates[sent:]:
                yield f"event: masks\ndata: {json.dumps(update)}\n\n"
            sent = len(job.updates)
            # The message too: a queued job's reason (no room on the cluster) goes out by the next keep-alive.
            current = (job.status, job.progress, job.message)
            if current != seen:
                seen = current
                if job.finished:
                    yield f"event: {job.status}\ndata: {json.dumps(job.to_json())}\n\n"
                    return
                yield f"event: progress\ndata: {json.dumps(job.to_json(with_result=False))}\n\n"
            else:
                yield ": keep-alive\n\n"
            service.wait_for_change(job_id, seen[:2], timeout=SSE_KEEPALIVE_S)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(stream(), mimetype="text/event-stream", headers=headers)
