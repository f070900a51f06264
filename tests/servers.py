"""Real servers on loopback for the abuse tests and benchmarks: gunicorn as the Procfile runs it (seeded random
vit_t weights, no checkpoint needed) and the nginx front of docs/deploy.md from its generated config."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def worker_pid(self) -> int:
        return requests.get(self.url + "/healthz", timeout=10).json()["pid"]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class PeakRss:
    """``with PeakRss(pid) as rss: ...`` samples the process's RSS every 5 ms meanwhile; ``rss.peak`` is the
    largest seen (``rss.baseline``: before)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = self.peak = rss_bytes(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


@contextlib.contextmanager
def gunicorn(workdir: Path, **env: str) -> Iterator[Server]:
    """gunicorn with the Procfile's config on a free loopback port; ``env`` adds ``SAM_*`` settings."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "gunicorn.log"
    environ = dict(
        os.environ,
        PORT=str(port),
        GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
        SAM_MODEL_TYPE="vit_t",
        SAM_ALLOW_DOWNLOAD="0",
        SAM_PRECISION="fp32",
        SAM_DATA_DIR=str(workdir / "data"),
    )
    environ.update(env)
    procfile = (REPO_ROOT / "Procfile").read_text().strip()
    command = [sys.executable, "-m", "gunicorn"] + procfile.split()[2:]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_until_up(server, 300)
        yield server
    finally:
        _stop(process, signal.SIGTERM, 60)


@contextlib.contextmanager
def nginx_front(workdir: Path, upstream: Server, **env: str) -> Iterator[Server]:
    """The generated nginx front on a free loopback port, proxying to ``upstream``."""
    from backend.config import Config
    from backend.server.front import nginx_config

    port = free_port()
    prefix = workdir / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    settings = Config.from_env({**os.environ, **env})
    user = "root" if os.geteuid() == 0 else None  # As root nginx would switch to "nobody", who cannot write here.
    config = prefix / "nginx.conf"
    config.write_text(
        nginx_config(
            settings,
            listen=f"127.0.0.1:{port}",
            upstream=upstream.url.removeprefix("http://"),
            prefix=prefix,
            user=user,
        )
    )
    command = [NGINX, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log"), "-g", "daemon off;"]
    log = prefix / "error.log"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_until_up(server, 30)
        yield server
    finally:
        _stop(process, signal.SIGQUIT, 20)  # nginx's graceful stop: finish open requests, then exit.


def _stop(process: subprocess.Popen, signum: int, timeout_s: float) -> None:
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _wait_until_up(server: Server, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log_text()[-3000:]}")
        try:
            if requests.get(server.url + "/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server did not answer within {timeout_s} s:\n{server.log_text()[-3000:]}")
