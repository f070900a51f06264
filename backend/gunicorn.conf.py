"""gunicorn settings for the Procfile: ``gunicorn --config backend/gunicorn.conf.py``.

Threaded workers (gthread), one model per worker process: the app is created after the fork (no preload), so
each worker loads its own model and runs its own encoder queue. Sized for CPU encoding: a request may wait
``SAM_REQUEST_TIMEOUT`` seconds for its embedding, and the worker timeout (a heartbeat from the worker's main
loop, which keeps beating while request threads encode) stays well above that.

Environment: every setting of backend/config.py (``PORT``, ``SAM_WORKERS``, ``SAM_THREADS``, ...). Command-line flags (or ``GUNICORN_CMD_ARGS``) override these.
"""

import os
import signal
import sys

from backend.config import Config, ConfigError

try:
    _settings = Config.from_env()
except ConfigError as _error:
    print(f"error: {_error}", file=sys.stderr)
    raise SystemExit(2) from None

bind = f"0.0.0.0:{_settings.port}"
wsgi_app = "backend.server.app:create_app()"
worker_class = "gthread"
workers = _settings.workers
threads = _settings.threads
preload_app = False
timeout = max(120, int(_settings.request_timeout) + 60)
graceful_timeout = 30
keepalive = 5
# gunicorn's own refusals (414 long request line, 400/431 huge or too many headers) are HTML; the front
# (nginx, see docs/deploy.md) refuses such requests first with JSON, so gunicorn's limits are set to its
# maxima and never reached behind it.
limit_request_line = 8190
limit_request_fields = 32768
limit_request_field_size = 8190
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level.lower()
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"  # The heartbeat file: on tmpfs, never blocked by a slow disk.


def on_starting(server):
    """In the master, before any worker: fetch the checkpoint once (workers would race for it) and create
    the shared secret, so every worker reads the same files."""
    from backend.config import Config
    from backend.services.weights import WeightsError, ensure_checkpoint

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
    """Share the cores between workers instead of each worker using them all; keep malloc from holding on
    to the memory a burst of large images freed (fewer arenas, large buffers mmapped)."""
    import torch

    from backend.runtime import heap

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    heap.tune(arenas=2, mmap_threshold=1 << 20)  # buffers of 1 MB or more go straight back when freed


def post_worker_init(worker):
    """On SIGTERM, first cancel what is queued (everything jobs, waiting encodes) so in-flight requests end
    at once and the worker exits promptly instead of after the graceful timeout."""
    from backend.server.app import shutdown

    graceful_exit = signal.getsignal(signal.SIGTERM)

    def cancel_then_exit(signum, frame):
        shutdown(worker.wsgi)
        if callable(graceful_exit):
            graceful_exit(signum, frame)

    signal.signal(signal.SIGTERM, cancel_then_exit)


def worker_exit(server, worker):
    """Leave without the interpreter's shutdown: a job thread stopped mid-batch inside torch would abort it
    ("terminate called without an active exception"), and nothing is left to save (state is in memory or
    already on disk)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
