"""The one error type of the HTTP API and its handlers: every error is JSON ``{"error", "message"}``."""

from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..runtime.quote import shorten

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


class ApiError(Exception):
    """Answered as JSON ``{"error": code, "message": message}`` with ``status`` and extra ``headers``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def register_error_handlers(app: Flask) -> None:
    from ..services.interfaces import RetryLater

    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(RetryLater, _retry_later)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None):
    response = jsonify(error=code, message=message)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def _api_error(error: ApiError):
    return json_error(error.status, error.code, error.message, error.headers)


def _retry_later(error):
    """A service that cannot answer now (e.g. the shared store is unreachable): 503 with its Retry-After."""
    code = getattr(error, "code", "unavailable")
    return json_error(503, code, str(error), {"Retry-After": str(error.retry_after)})


def _http_error(error: HTTPException):
    if error.code == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = f"the request body is larger than the limit of {limit:,} bytes (SAM_MAX_UPLOAD_BYTES)"
    elif error.code == 404:
        message = f"{shorten(request.path)} does not exist"
    else:
        message = error.description or error.name
    code = _HTTP_CODES.get(error.code, error.name.lower().replace(" ", "_"))
    headers = {}
    if error.code == 405 and getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(error.valid_methods)
    return json_error(error.code or 500, code, message, headers)


def _unexpected_error(error: Exception):
    logger.exception("unhandled error on %s %s", request.method, shorten(request.path, 200))
    return json_error(500, "internal_error", "the server failed on this request; it has been logged")
