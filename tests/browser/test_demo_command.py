"""The README's demo command, as a newcomer runs it: `make demo` on a machine with no checkpoint and no
internet must still serve a working page, on random weights, saying so plainly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("demo-data")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM_")}
    # A fresh data dir: no checkpoint, no exported decoders; the default settings are what is under test.
    env["SAM_DATA_DIR"] = str(data_dir)
    log_path = data_dir / "demo.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            ["make", "demo", f"PORT={port}"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = None
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline and process.poll() is None:
            match = re.search(r"running at (http://\S+)", log_path.read_text())
            if match:
                url = match.group(1)
                try:
                    if requests.get(url + "healthz", timeout=2).ok:
                        break
                except requests.RequestException:
                    pass
            time.sleep(0.5)
        else:
            pytest.fail(f"`make demo` did not serve within {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
        yield url, log_path
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_demo_prints_the_url_on_the_requested_port(demo_server):
    url, _ = demo_server
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")


def test_offline_demo_says_it_runs_random_weights_and_how_to_get_real_ones(demo_server):
    url, log_path = demo_server
    model = requests.get(url + "api/model", timeout=10).json()
    assert model["weights"] == "random"
    assert "download-weights" in model["weights_message"]
    assert "random" in log_path.read_text().lower()


def test_demo_page_loads_in_chromium_without_console_errors(demo_server, browser):
    url, _ = demo_server
    context = browser.new_context()
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and errors.append(message.text))
        page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
        page.goto(url)
        page.wait_for_function("['ready', 'error'].includes(document.body.dataset.decoder)", timeout=120_000)
        assert page.evaluate("document.body.dataset.decoder") == "ready"
        assert page.evaluate("crossOriginIsolated") is True
        banner = page.locator("#weights-banner")
        assert banner.is_visible()
        # One short line for the visitor; the operator's details (what runs, the command for real weights)
        # behind the disclosure.
        assert "Demo model" in banner.inner_text()
        details = page.locator("#weights-details").text_content()
        assert "RANDOM" in details and "download-weights" in details, details
        assert errors == []
    finally:
        context.close()
