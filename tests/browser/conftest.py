"""Browser tests: Debian Chromium driven by Playwright against the real Flask server.

The server runs as a subprocess (`python -m backend serve`) on a free loopback port with the seeded random
MobileSAM (backend.services.weights.random_model, saved as a checkpoint file), fp32 encoder, no network (or SAM_BROWSER_TEST_URL names a
running one with that checkpoint). Every test page fails the test on any console error or uncaught
exception. Helpers shared with the benchmarks live in browser_helpers.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from backend_fixtures import vit_t_checkpoint
from browser_helpers import CHROMIUM, CHROMIUM_ARGS, ConsoleWatch, ExternalServer, LiveServer


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "webgpu: runs the decoder on WebGPU via SwiftShader (slow CPU emulation); deselect with -m 'not webgpu'",
    )


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    if os.environ.get("SAM_BROWSER_TEST_URL"):
        yield ExternalServer(os.environ["SAM_BROWSER_TEST_URL"])
        return
    server = LiveServer(vit_t_checkpoint(), tmp_path_factory.mktemp("sam-data"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def playwright_instance():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium (make browser)")
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="session")
def browser(playwright_instance):
    browser = playwright_instance.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url.rstrip("/"))
    page = context.new_page()
    page.set_default_timeout(90_000)
    watch = ConsoleWatch(page)
    page.console_watch = watch
    yield page
    context.close()
    assert not watch.unexpected(), f"console errors: {watch.unexpected()}"
