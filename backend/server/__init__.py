"""The HTTP layer: the app factory (``app.create_app``), one module per blueprint (``api`` for /api, ``everything_routes``
for everything mode, ``static`` for the client and /healthz), the JSON errors, CORS, rate limits, gzip caches and
the nginx front's config.

May import: ``backend.config``, ``backend.integrations``, ``backend.cluster``, ``backend.text``, ``backend.services``,
the model packages and ``backend.runtime``. Nothing below imports this package.
"""
