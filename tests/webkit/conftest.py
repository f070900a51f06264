"""The WebKit suite: Debian's WebKitGTK (Safari's engine) over WebKitWebDriver, against the real server.

One server (the seeded random vit_t, fp32, as the Chromium tests run it), one private Xvfb, one torch oracle
(tests/firefox/predictor_oracle.py's, in this process) and one second-origin host page serve every test; each
test gets a fresh browser and fails on any error the page reported (console.error, an uncaught error, the
app's error banner). `make webkit-test` installs what it needs and runs it (docs/webkit.md).
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(TESTS / "browser"),
    str(TESTS / "firefox"),
    str(TESTS / "benchmarks"),
]  # LiveServer, the torch oracle, bench_memory

from backend_fixtures import vit_t_checkpoint  # noqa: E402
from browser_helpers import LiveServer  # noqa: E402
from webkit_helpers import launch_webkit, page_errors, xvfb_display  # noqa: E402

SAMPLE = "coffee.png"
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
SHAREABLE = {"Access-Control-Allow-Origin": "*", "Cross-Origin-Resource-Policy": "cross-origin"}


class Host:
    """Another origin's pages on their own loopback port: `routes` maps a path to (body, content type, headers)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[bytes, str, dict]] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server hook's name
                route = routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_error(404)
                    return
                body, content_type, headers = route
                self.send_response(200)
                for name, value in {"Content-Type": content_type, "Cache-Control": "no-store", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.origin = self.url[:-1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def display():
    with xvfb_display() as name:
        yield name


@pytest.fixture(scope="session")
def host():
    host = Host()
    yield host
    host.stop()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, host):
    # The host page may load the app's element (CORS + CORP on the embeddable files; the app's page is unchanged).
    server = LiveServer(vit_t_checkpoint(), tmp_path_factory.mktemp("sam-data"), {"SAM_CORS_ORIGINS": host.origin})
    yield server
    server.stop()


@pytest.fixture(scope="session")
def photo_path(live_server, host, tmp_path_factory) -> Path:
    """The gallery's sample as the server sends it, so the server encodes exactly the pixels the oracle decodes."""
    answer = requests.get(f"{live_server.url}gallery/{SAMPLE}", timeout=30)
    assert answer.status_code == 200, f"the server's gallery has no {SAMPLE}"
    path = tmp_path_factory.mktemp("images") / SAMPLE
    path.write_bytes(answer.content)
    host.routes["/" + SAMPLE] = (answer.content, "image/png", SHAREABLE)
    return path


@pytest.fixture(scope="session")
def oracle():
    from predictor_oracle import Oracle

    return Oracle()


@pytest.fixture
def driver(display, live_server):
    driver = launch_webkit(display)
    try:
        yield driver
        errors = page_errors(driver)
    finally:
        driver.quit()
    assert errors == [], f"errors in WebKit: {errors}"
