"""A real gunicorn (the Procfile's config) on loopback with the seeded random vit_t: uploads over HTTP, a burst of
concurrent uploads (each 200 or 503, none hanging, the server still up), and bad input over the wire."""

import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from backend_fixtures import (
    WIDE_PHOTO,
    distinct_image,
    free_port,
    image_bytes,
    model_embedding,
    photo_jpeg,
    read_rgb,
    session_data_dir,
    vit_t_checkpoint,
    vit_t_model,
)

from backend.services import codec

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from run_gunicorn(tmp_path_factory)


def run_gunicorn(tmp_path_factory, **extra_env):
    port = free_port()
    log_path = tmp_path_factory.mktemp("gunicorn") / "server.log"
    env = dict(
        os.environ,
        PORT=str(port),
        GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
        SAM_MODEL_TYPE="vit_t",
        SAM_CHECKPOINT=str(vit_t_checkpoint()),
        SAM_DATA_DIR=str(session_data_dir()),
        SAM_ALLOW_DOWNLOAD="0",
        SAM_PRECISION="fp32",
        SAM_QUEUE_SIZE="2",
        SAM_BATCH_SIZE="2",
        SAM_MAX_UPLOAD_BYTES=str(2 * 1024 * 1024),
        SAM_THREADS="32",
    )
    env.update(extra_env)
    procfile = (REPO_ROOT / "Procfile").read_text().strip()
    assert procfile.startswith("web: gunicorn ")
    command = [sys.executable, "-m", "gunicorn"] + procfile.split()[2:]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(base + "/healthz", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"gunicorn did not answer within 240 s:\n{log_path.read_text()[-3000:]}")
    yield base
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(40) == 0, log_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()


def test_upload_and_stream_the_embedding(server):
    truck = photo_jpeg(*WIDE_PHOTO).read_bytes()
    upload = requests.post(server + "/api/images", files={"image": ("truck.jpg", truck, "image/jpeg")}, timeout=180)
    assert upload.status_code == 200, upload.text
    body = upload.json()
    assert (body["width"], body["height"], body["model_type"], body["weights"]) == (1800, 1200, "vit_t", "real")
    embedding = requests.get(server + body["embedding_url"], timeout=30, headers={"Accept-Encoding": "identity"})
    assert embedding.status_code == 200
    assert int(embedding.headers["Content-Length"]) == len(embedding.content) == body["bytes"]
    # The values, without the default int8 format's rounding: float32 on the wire.
    exact = requests.get(server + body["embedding_url"].split("?")[0] + "?format=f32", timeout=30)
    expected = model_embedding(vit_t_model(), read_rgb(photo_jpeg(*WIDE_PHOTO)))
    assert np.abs(codec.decode_embedding(exact.content) - expected).max() <= 2e-3
    again = requests.post(server + "/api/images", data=truck, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert again.json()["cache_hit"] is True and again.json()["id"] == body["id"]


def test_burst_of_concurrent_uploads_each_gets_200_or_503_and_the_server_stays_up(server):
    before = requests.get(server + "/healthz", timeout=10).json()
    uploads = [image_bytes(distinct_image(1000 + i, (48, 64)), "PNG") for i in range(24)]

    def upload(data):
        started = time.monotonic()
        response = requests.post(server + "/api/images", data=data, headers={"Content-Type": "image/png"}, timeout=240)
        return response, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(uploads)) as pool:
        results = list(pool.map(upload, uploads))
    statuses = [response.status_code for response, _ in results]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    for response, seconds in results:
        if response.status_code == 503:
            assert response.json()["error"] in ("encoder_busy", "encoder_timeout")
            assert int(response.headers["Retry-After"]) >= 1
            assert seconds < 30  # Refused at once, not after waiting.
        else:
            assert len(response.json()["id"]) == 32
    after = requests.get(server + "/healthz", timeout=10).json()
    assert after["status"] == "ok" and after["pid"] == before["pid"]  # Same worker: nothing crashed.
    assert after["encoder"]["largest_batch"] >= 2  # Uploads that arrived together shared a forward pass.


@pytest.mark.parametrize(
    "data, headers, status",
    [
        (b"\x89PNG" + b"\0" * (3 * 1024 * 1024), {"Content-Type": "image/png"}, 413),
        (b"<!doctype html><script>alert(1)</script>", {"Content-Type": "image/png"}, 415),
        (b"", {"Content-Type": "image/jpeg"}, 400),
    ],
    ids=["over-limit", "html", "empty"],
)
def test_bad_uploads_over_http_are_json_and_harmless(server, data, headers, status):
    response = requests.post(server + "/api/images", data=data, headers=headers, timeout=60)
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("application/json") and response.json()["message"]
    assert requests.get(server + "/healthz", timeout=10).status_code == 200


def test_chunked_upload_over_the_limit_is_refused(server):
    def chunks():
        for _ in range(40):
            yield b"\xff" * 100_000  # 4 MB in all, no Content-Length.

    response = requests.post(server + "/api/images", data=chunks(), headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert response.status_code == 413 and response.json()["error"] == "too_large"


def test_page_is_cross_origin_isolated(server):
    page = requests.get(server + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert page.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    wasm = requests.get(server + "/vendor/ort/ort-wasm-simd-threaded.wasm", timeout=30)
    assert wasm.headers["Content-Type"] == "application/wasm" and wasm.content[:4] == b"\0asm"
    info = requests.get(server + "/api/model", timeout=10).json()
    assert info["decoders"] and info["default_decoder"] == "lowres-quantized"


def test_cli_serve_prints_the_url_and_serves():
    port = free_port()
    env = dict(os.environ, PORT=str(port), SAM_DATA_DIR=str(session_data_dir()), SAM_ALLOW_DOWNLOAD="0")
    command = [
        sys.executable,
        "-m",
        "backend",
        "serve",
        "--model-type",
        "vit_t",
        "--checkpoint",
        str(vit_t_checkpoint()),
    ]
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        line = process.stdout.readline()
        assert line.strip() == f"Segment Anything is running at http://127.0.0.1:{port}/"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                info = requests.get(f"http://127.0.0.1:{port}/api/model", timeout=2).json()
                break
            except requests.RequestException:
                time.sleep(0.3)
        else:
            pytest.fail("python -m backend serve did not answer")
        assert (info["model_type"], info["weights"]) == ("vit_t", "real")
    finally:
        process.terminate()
        process.wait(20)


def test_two_workers_share_embeddings_and_the_secret(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("two-workers")
    for decoders in session_data_dir().glob("decoders"):  # Reuse exported decoders: only the sharing is new here.
        os.symlink(decoders, data_dir / "decoders")
    server = run_gunicorn(tmp_path_factory, SAM_WORKERS="2", SAM_DATA_DIR=str(data_dir))
    base = next(server)
    try:
        upload = requests.post(base + "/api/images", data=image_bytes(distinct_image(7, (40, 60)), "PNG"), timeout=180)
        assert upload.status_code == 200, upload.text
        served_by = {}
        for _ in range(80):  # New connections land on either worker; ask until both have answered.
            with requests.Session() as fresh:
                embedding = fresh.get(base + upload.json()["embedding_url"], timeout=30)
                assert embedding.status_code == 200 and len(embedding.content) == upload.json()["bytes"]
                served_by[fresh.get(base + "/healthz", timeout=10).json()["pid"]] = True
            if len(served_by) == 2:
                break
        assert len(served_by) == 2
        assert (data_dir / "embeddings" / f"{upload.json()['id']}.npz").is_file()
    finally:
        next(server, None)
