"""Hold under abuse, against a real gunicorn (defaults of backend/config.py, seeded random vit_t) behind the
nginx front of docs/deploy.md: decompression bombs, slow clients, bursts, greedy clients, a damaged cache,
path tricks, huge inputs, oversized requests, and a stop with work queued."""

from __future__ import annotations

import concurrent.futures
import http.client
import io
import json
import signal
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image
from servers import PeakRss, gunicorn, nginx_front, rss_bytes


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def distinct_png(seed: int, size=(48, 64)) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def jpeg_bomb(width: int = 6000, height: int = 6000) -> bytes:
    """A ~600-byte JPEG whose header claims ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def png_bomb(side: int = 6000) -> bytes:
    """A real side x side PNG of one colour: ~100 KB on the wire, 36 MP decoded."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (10, 20, 30)).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, seconds: float) -> None:
        self.status, self.headers, self.body, self.seconds = status, headers, body, seconds

    def json(self):
        return json.loads(self.body)


def call(base: str, method: str, path: str, body: bytes | None = None, headers=None, source="127.0.0.1", timeout=120):
    """One request from the loopback address ``source`` (each 127.x.y.z is a different client to the server);
    the path is sent exactly as given (no dot-segment clean-up)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout, source_address=(source, 0))
    started = time.monotonic()
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read(), time.monotonic() - started)
    finally:
        connection.close()


def upload(base: str, data: bytes, source: str, content_type: str = "image/png") -> Reply:
    return call(base, "POST", "/api/images", data, {"Content-Type": content_type}, source=source)


def assert_json_error(reply: Reply, status: int, code: str | None = None) -> dict:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers["Content-Type"].startswith("application/json"), reply.headers
    body = reply.json()
    assert set(body) >= {"error", "message"} and body["message"]
    if code:
        assert body["error"] == code, body
    return body


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("abuse")
    settings = {
        "SAM_TRUSTED_PROXIES": "1",  # Behind the front: clients are told apart by the address nginx saw.
        "SAM_DISK_CACHE_DIR": str(workdir / "embeddings"),
        "SAM_CACHE_BYTES": "1",  # Memory keeps nothing: every embedding read goes to the disk files.
        "SAM_UPLOAD_RATE": "10/minute",
        "SAM_REQUEST_TIMEOUT": "60",  # This machine may be shared: queued uploads give up sooner.
    }
    with gunicorn(workdir, **settings) as app, nginx_front(workdir, app, **settings) as front:
        assert upload(front.url, distinct_png(1), "127.0.1.1").status == 200  # The first forward pass is slow.
        yield app, front


@pytest.fixture(scope="module")
def front(servers):
    return servers[1].url


def wait_until_idle(base: str, timeout_s: float = 600) -> None:
    """Until nothing is queued or encoding (a loaded machine may take half a minute per image)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        encoder = call(base, "GET", "/healthz").json()["encoder"]
        if encoder["queue_depth"] == 0 and encoder["encoding"] == 0:
            return
        time.sleep(0.5)
    raise AssertionError("the encoder never became idle")


@pytest.fixture
def idle(front):
    """Each test starts with an idle encoder, whatever the tests before it queued."""
    wait_until_idle(front)


class HealthProbe:
    """Asks /healthz through the front every 100 ms in a thread, recording each answer's latency."""

    def __init__(self, base: str) -> None:
        self.base, self.latencies, self.failures = base, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = call(self.base, "GET", "/healthz", timeout=10)
                (self.latencies if reply.status == 200 else self.failures).append(reply.seconds)
            except OSError as error:
                self.failures.append(repr(error))
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(15)


# 1. Memory -------------------------------------------------------------------------------------------------


def test_decompression_bombs_stay_within_the_budget_and_memory_comes_back(servers, idle):
    app, front_server = servers
    pid = app.worker_pid()
    bombs = [jpeg_bomb() for _ in range(8)] + [png_bomb()] * 4
    with PeakRss(pid) as rss, concurrent.futures.ThreadPoolExecutor(len(bombs)) as pool:
        replies = list(pool.map(lambda i: upload(front_server.url, bombs[i], f"127.0.2.{i + 1}"), range(len(bombs))))
    baseline, peak = rss.baseline, rss.peak
    for reply in replies:
        assert reply.status in (200, 400, 503), (reply.status, reply.body[:200])
        if reply.status == 503:
            assert reply.json()["error"] in ("decoder_busy", "encoder_busy") and int(reply.headers["Retry-After"]) >= 1
    wait_until_idle(front_server.url)
    time.sleep(1)
    after = rss_bytes(pid)
    # Eight 36 MP images decoded at full size at once would take ~3 GB; the budget lets one PNG bomb decode
    # at a time and JPEG bombs decode at 1/4 scale.
    assert peak - baseline < 1_200_000_000, (baseline, peak)
    assert after - baseline < 300_000_000, (baseline, after)
    assert app.worker_pid() == pid


# 2. Slow clients -------------------------------------------------------------------------------------------


def test_sixteen_slow_uploads_do_not_starve_health_checks_or_other_uploads(front, idle):
    host, port = front.removeprefix("http://").split(":")
    slow = []
    for i in range(16):
        sock = socket.create_connection((host, int(port)), timeout=30, source_address=(f"127.0.3.{i + 1}", 0))
        sock.sendall(
            b"POST /api/images HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 10000000\r\n\r\n"
        )
        slow.append(sock)
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            for sock in slow:
                sock.sendall(b"\0")  # 1 byte per second each.
            stop.wait(1.0)

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(1.0)
        with HealthProbe(front) as probe:
            quick = upload(front, distinct_png(500), "127.0.3.100")
            time.sleep(4)
        # Answered while all sixteen still trickle (before, it waited until they gave up).
        assert quick.status == 200 and trickler.is_alive()
        assert not probe.failures and len(probe.latencies) >= 10
        assert max(probe.latencies) < 1.0, probe.latencies
    finally:
        stop.set()
        trickler.join(5)
    # A client that stops sending is dropped after the front's 10 s body timeout (nginx closes the socket).
    silent = slow[0]
    silent.settimeout(30)
    stopped = time.monotonic()
    answer = b""
    while chunk := silent.recv(65536):
        answer += chunk
    assert 5 < time.monotonic() - stopped < 20 and answer in (b"",) or b" 408 " in answer[:20]
    for sock in slow:
        sock.close()


# 3. Back-pressure with the defaults ----------------------------------------------------------------------------


def test_a_burst_of_fifty_uploads_gets_prompt_answers_and_health_stays_fast(front, idle):
    images = [distinct_png(1000 + i) for i in range(50)]
    with HealthProbe(front) as probe, concurrent.futures.ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda i: upload(front, images[i], f"127.0.4.{i + 1}"), range(50)))
    statuses = [reply.status for reply in replies]
    assert set(statuses) <= {200, 503}, statuses  # 200s when the encoder keeps up within the request timeout.
    for reply in replies:
        if reply.status == 503:
            assert reply.json()["error"] in ("encoder_busy", "encoder_timeout") and int(reply.headers["Retry-After"])
            if reply.json()["error"] == "encoder_busy":
                assert reply.seconds < 5, reply.seconds  # Refused at once, not after waiting in a backlog.
    assert sum(reply.json().get("error") == "encoder_busy" for reply in replies) >= 1
    assert not probe.failures and max(probe.latencies) < 1.0, probe.latencies


# 4. Fairness -----------------------------------------------------------------------------------------------------


def test_one_client_is_rate_limited_with_429_while_another_is_served(front, idle):
    image = distinct_png(2000)
    assert upload(front, image, "127.0.5.9").status == 200  # Encoded once: the rest are quick cache hits.
    replies = [upload(front, image, "127.0.5.1") for _ in range(11)]
    assert [r.status for r in replies[:10]] == [200] * 10
    body = assert_json_error(replies[10], 429, "too_many_requests")
    assert int(replies[10].headers["Retry-After"]) >= 1 and "per 1 minute" in body["message"]
    assert upload(front, image, "127.0.5.2").status == 200


def test_one_client_may_have_two_everything_jobs_and_cancel_them(front, idle):
    image_id = upload(front, distinct_png(3000, (96, 128)), "127.0.6.1").json()["id"]

    def start(points):
        body = json.dumps({"points_per_side": points}).encode()
        headers = {"Content-Type": "application/json"}
        return call(front, "POST", f"/api/images/{image_id}/everything", body, headers, source="127.0.6.1")

    first, second, third = start(16), start(17), start(18)
    assert (first.status, second.status) == (202, 202)
    assert_json_error(third, 429, "too_many_jobs")
    assert int(third.headers["Retry-After"]) >= 1
    cancelled = call(front, "DELETE", f"/api/everything/{first.json()['job_id']}", source="127.0.6.1")
    assert cancelled.status == 200 and cancelled.json()["status"] == "cancelled"
    fourth = start(18)
    assert fourth.status == 202
    for job in (second, fourth):
        assert call(front, "DELETE", f"/api/everything/{job.json()['job_id']}").json()["status"] == "cancelled"


# 5. A self-healing cache -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "empty"])
def test_a_damaged_cache_file_is_a_miss_then_deleted_and_the_image_encoded_again(servers, idle, damage):
    app, front_server = servers
    data = distinct_png(4000 + len(damage))
    first = upload(front_server.url, data, "127.0.7.1").json()
    path = app.log.parent / "embeddings" / f"{first['id']}.npz"  # SAM_DISK_CACHE_DIR of the fixture.
    raw = bytearray(path.read_bytes())
    raw = {"truncated": raw[: len(raw) // 3], "bit-flipped": raw, "empty": bytearray()}[damage]
    if damage == "bit-flipped":
        raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    assert_json_error(call(front_server.url, "GET", first["embedding_url"]), 404, "unknown_id")
    assert not path.exists()
    assert "deleting unreadable disk cache entry" in app.log_text()
    again = upload(front_server.url, data, "127.0.7.1")
    assert again.status == 200 and again.json()["id"] == first["id"] and again.json()["cache_hit"] is False
    assert call(front_server.url, "GET", first["embedding_url"]).status == 200


# 6. Static files, echoes, JSON ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/./node_modules/onnxruntime-web/package.json",
        "/css/../node_modules/onnxruntime-web/package.json",
        "/node_modules/onnxruntime-web/package.json",
        "/package.json",
        "/README.md",
        "/vendor/ort/../package.json",
        "/vendor/ort/ort.node.min.js",
        "/js/../../backend/server/app.py",
    ],
)
def test_only_the_allow_listed_files_are_served(servers, path):
    for server in servers:  # gunicorn directly and through the front.
        reply = call(server.url, "GET", path)
        # 404 from the app; nginx itself refuses a path that climbs above the root (400), also as JSON.
        assert_json_error(reply, reply.status if reply.status == 400 and server is servers[1] else 404)


def test_the_clients_files_are_served(front):
    for path in ("/", "/js/page/main.js", "/css/app.css", "/vendor/ort/ort.wasm.min.mjs"):
        assert call(front, "GET", path).status == 200, path


def test_errors_quote_only_a_short_prefix_of_the_input(front):
    image_id = "0" * 32
    reply = call(front, "GET", f"/api/embeddings/{image_id}?format={'x' * 3000}")
    assert_json_error(reply, 400, "unknown_format")
    assert len(reply.body) < 400
    reply = call(front, "GET", f"/api/everything/{'j' * 3000}")
    assert_json_error(reply, 404, "unknown_job")
    assert len(reply.body) < 400
    big_name = json.dumps({"p" * 3000: 1}).encode()
    reply = call(front, "POST", f"/api/images/{image_id}/everything", big_name, {"Content-Type": "application/json"})
    assert_json_error(reply, 400, "bad_parameters")
    assert len(reply.body) < 600


@pytest.mark.parametrize(
    "body", [b"[" * 1_000_000, b'{"a":' * 3000 + b"1" + b"}" * 3000, json.dumps({"x": "y" * 100_000}).encode()]
)
def test_nested_or_oversized_json_is_a_400(front, body):
    reply = call(front, "POST", f"/api/images/{'0' * 32}/everything", body, {"Content-Type": "application/json"})
    assert_json_error(reply, 400, "bad_json")


# 9. The front answers what gunicorn would answer in HTML ------------------------------------------------------------


def test_oversized_requests_are_answered_by_the_front_as_json(front):
    assert_json_error(call(front, "GET", "/" + "a" * 10_000), 414, "uri_too_long")
    assert_json_error(call(front, "GET", "/healthz", headers={"X-Huge": "h" * 20_000}), 431, "headers_too_large")
    many = {f"X-H{i}": "v" for i in range(300)}  # More than gunicorn's default 100 fields: passed through.
    assert call(front, "GET", "/healthz", headers=many).status == 200
    reply = call(front, "POST", "/api/images", b"\0" * (26 * 1024 * 1024), {"Content-Type": "image/png"})
    assert_json_error(reply, 413, "too_large")


# 4. Shutdown (last: it stops the server) ----------------------------------------------------------------------------


def test_stop_with_jobs_queued_cancels_them_and_exits_promptly(servers, idle):
    app, front_server = servers
    image_id = upload(front_server.url, distinct_png(5000, (96, 128)), "127.0.8.1").json()["id"]
    for source, points in (("127.0.8.1", 32), ("127.0.8.2", 31), ("127.0.8.3", 30)):
        body = json.dumps({"points_per_side": points}).encode()
        reply = call(front_server.url, "POST", f"/api/images/{image_id}/everything", body, source=source)
        assert reply.status == 202
    time.sleep(1.0)  # One job runs, two wait.
    started = time.monotonic()
    app.process.send_signal(signal.SIGTERM)
    assert app.process.wait(30) == 0
    assert time.monotonic() - started < 10, "the stop waited for queued work"
    assert "cancelled" in app.log_text()
