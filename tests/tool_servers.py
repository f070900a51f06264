"""The annotation tools the integration tests drive, each from its own virtualenv beside the repo's (their pinned
dependencies would clash with the app's; `make tool-venvs` builds them): Label Studio started on loopback with
SQLite, the Roboflow inference client run as a script, and the app itself served over real HTTP for them.

``python tests/tool_servers.py template`` migrates Label Studio's database once into a template (a fresh
database takes minutes of migrations on two cores; a copy of a migrated one starts in under a minute).
"""

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
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LABEL_STUDIO_VENV = REPO_ROOT / ".venv-label-studio"
INFERENCE_SDK_VENV = REPO_ROOT / ".venv-inference-sdk"
LABEL_STUDIO_TEMPLATE = LABEL_STUDIO_VENV / "template-data"
# The user Label Studio creates at start (its --username/--password/--user-token), for the API calls.
LABEL_STUDIO_USER = ("tests@example.com", "sam-tests-password")
LABEL_STUDIO_TOKEN = "5a4d0c3b2a190817f6e5d4c3b2a1908172635445"
START_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tool_python(venv: Path) -> Path | None:
    python = venv / "bin" / "python"
    return python if (venv / ".installed").is_file() and python.is_file() else None


def label_studio_environment(data_dir: Path) -> dict[str, str]:
    """Label Studio's settings for a test: its data in ``data_dir`` (SQLite), no network (no version check, no
    analytics, no error reporting), and the loopback ML backend allowed (1.23 refuses local addresses for ML
    backends and outgoing requests unless these two are off)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "LABEL_STUDIO_"))}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    return env


@contextlib.contextmanager
def label_studio(data_dir: Path, timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """Label Studio (this repo's .venv-label-studio) on a free loopback port with its data in ``data_dir``; yields
    its URL once ``/health`` answers, within ``timeout_s``. Stopped (its process group) on exit."""
    port = free_port()
    username, password = LABEL_STUDIO_USER
    log = open(data_dir / "label-studio.log", "wb")  # noqa: SIM115 - closed below, after the process
    process = subprocess.Popen(
        [
            str(LABEL_STUDIO_VENV / "bin" / "label-studio"),
            "start",
            "--no-browser",
            "--data-dir",
            str(data_dir),
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
            "--username",
            username,
            "--password",
            password,
            "--user-token",
            LABEL_STUDIO_TOKEN,
            "--enable-legacy-api-token",
        ],
        cwd=data_dir,
        env=label_studio_environment(data_dir),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Label Studio exited ({process.returncode}); see {data_dir / 'label-studio.log'}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Label Studio did not answer within {timeout_s:g} s")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def label_studio_data_dir(destination: Path) -> Path:
    """A copy of the migrated template database in ``destination`` (the whole template when it exists)."""
    if (LABEL_STUDIO_TEMPLATE / "label_studio.sqlite3").is_file():
        shutil.copytree(LABEL_STUDIO_TEMPLATE, destination, ignore=shutil.ignore_patterns("*.log"))
    else:
        destination.mkdir(parents=True)
    return destination


def build_label_studio_template() -> None:
    """Starts Label Studio once on an empty data dir (it migrates the database and creates the user) and keeps
    that dir as the template the tests copy."""
    if (LABEL_STUDIO_TEMPLATE / "label_studio.sqlite3").is_file():
        return
    scratch = LABEL_STUDIO_TEMPLATE.with_name("template-building")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    started = time.monotonic()
    with label_studio(scratch, timeout_s=1800):
        pass
    scratch.rename(LABEL_STUDIO_TEMPLATE)
    print(f"Label Studio's database migrated in {time.monotonic() - started:.0f} s: {LABEL_STUDIO_TEMPLATE}")


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:
    """``app`` over real HTTP on a free loopback port (werkzeug, threaded), for tools that call it."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


if __name__ == "__main__":
    if sys.argv[1:] == ["template"]:
        build_label_studio_template()
    else:
        sys.exit("usage: python tests/tool_servers.py template")
