"""gunicorn settings for the Procfile: ``gunicorn --config backend/gunicorn.conf.py``.

Threaded workers (gthread), one model per worker process: the app is created after the fork (no preload), so
each worker loads its own model and runs its own encoder queue. Sized for CPU encoding: a request may wait
``SAM_REQUEST_TIMEOUT`` seconds for its embedding, and the worker timeout (a heartbeat from the worker's main
loop, which keeps beating while request threads encode) stays well above that.

Environment: ``PORT`` (default 5000), ``SAM_WORKERS`` (default 1), ``SAM_THREADS`` (default 8), plus every
``SAM_*`` setting of backend/config.py. Command-line flags (or ``GUNICORN_CMD_ARGS``) override these.
"""

import os

bind = f"0.0.0.0:{os.environ.get('PORT') or '5000'}"
wsgi_app = "backend.app:create_app()"
worker_class = "gthread"
workers = int(os.environ.get("SAM_WORKERS") or 1)
threads = int(os.environ.get("SAM_THREADS") or 8)
preload_app = False
timeout = max(120, int(float(os.environ.get("SAM_REQUEST_TIMEOUT") or 120)) + 60)
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = (os.environ.get("SAM_LOG_LEVEL") or "info").lower()
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"  # The heartbeat file: on tmpfs, never blocked by a slow disk.


def on_starting(server):
    """In the master, before any worker: fetch the checkpoint once (workers would race for it) and create
    the shared secret, so every worker reads the same files."""
    from backend.config import Config
    from backend.weights import WeightsError, ensure_checkpoint

    config = Config.from_env()
    config.resolve_secret()
    if workers > 1 and not config.disk_cache_dir:
        # The embedding GET may reach another worker than the upload did: share embeddings through disk.
        shared = os.path.join(config.data_dir, "embeddings")
        os.environ["SAM_DISK_CACHE_DIR"] = shared  # Inherited by the workers forked after this.
        server.log.info("%d workers: sharing embeddings through %s (set SAM_DISK_CACHE_DIR to choose)", workers, shared)
    try:
        path, reason = ensure_checkpoint(config)
    except WeightsError as error:
        server.log.error("%s", error)
        raise SystemExit(1) from None
    if path is None:
        server.log.warning("%s; workers will start on seeded random weights", reason)


def post_fork(server, worker):
    """Share the cores between workers instead of each worker using them all."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
