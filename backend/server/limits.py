"""Per-client fairness: request rates for uploads and everything jobs (Flask-Limiter; 429 + ``Retry-After``),
counted in Redis when ``SAM_REDIS_URL`` is set so every worker and host shares them, else in this process.

Clients are told apart by address: behind a front (nginx), ``SAM_TRUSTED_PROXIES`` says how many
``X-Forwarded-For`` hops to believe, so the address is the client's, not the front's.
"""

from __future__ import annotations

from flask import Flask, request
from flask_limiter import Limiter
from werkzeug.middleware.proxy_fix import ProxyFix

from ..config import Config

# Endpoint -> the Config field with its rate ("30/minute", "5/second;100/hour", ...).
RATE_LIMITED = {"api.upload_image": "upload_rate", "everything.start": "everything_rate"}


def client_address() -> str:
    return request.remote_addr or "unknown"


def install_rate_limits(app: Flask, settings: Config) -> Limiter:
    """Applies the configured rates to the rate-limited endpoints (register the blueprints first)."""
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)
    limiter = Limiter(
        client_address,
        app=app,
        storage_uri=settings.redis_url or "memory://",
        headers_enabled=True,
        strategy="moving-window",  # Any 60 s, not calendar minutes: no double burst at a window edge.
        in_memory_fallback_enabled=True,  # Redis unreachable: limit per process rather than not at all.
    )
    for endpoint, field in RATE_LIMITED.items():
        if endpoint in app.view_functions:
            rate = getattr(settings, field)
            app.view_functions[endpoint] = limiter.limit(rate)(app.view_functions[endpoint])
    return limiter
