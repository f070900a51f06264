"""Past one machine with the real parts: a local Ray cluster running the encoder deployment, web hosts as processes.

The Ray head (one per session, loopback) comes from cluster_fixtures; the encoder is deployed with the
command line (`python -m backend deploy-encoder`, 2 replicas of 1 thread) on the seeded random vit_t.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from backend_fixtures import image_bytes
from cluster_fixtures import (
    RAY_ENV,
    WebHost,
    ray_address,  # noqa: F401 - the session fixture
    vit_t_checkpoint,
)

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "cluster-test-secret"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def model_settings(workdir):
    """The settings every part (replicas, web hosts, the single-process reference) shares."""
    return {
        "SAM_MODEL_TYPE": "vit_t",
        "SAM_CHECKPOINT": str(vit_t_checkpoint(workdir)),
        "SAM_ALLOW_DOWNLOAD": "0",
        "SAM_DEVICE": "cpu",
        "SAM_PRECISION": "fp32",
        "SAM_SECRET": SECRET,
        "SAM_DATA_DIR": str(workdir / "data"),
    }


@pytest.fixture(scope="module")
def encoder(ray_address, model_settings):  # noqa: F811
    command = [sys.executable, "-m", "backend", "deploy-encoder", "--ray-address", ray_address]
    command += ["--replicas", "2", "--threads", "1"]
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, **RAY_ENV, **model_settings},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deployed sam-encoder: 2 replica(s)" in result.stdout
    return ray_address


@pytest.fixture(scope="module")
def web_a(encoder, model_settings, workdir):
    host = WebHost({**model_settings, "SAM_RAY_ADDRESS": encoder}, workdir)
    try:
        host.wait_ready()
        yield host
    finally:
        host.stop()


def _photo(index: int) -> bytes:
    """Distinct small images: a seeded noise image each (the encoder cost does not depend on content)."""
    pixels = np.random.default_rng(index).integers(0, 256, (48 + index, 64, 3), dtype=np.uint8)
    return image_bytes(pixels)


def _single_process_embedding(model_settings, data: bytes) -> tuple[str, bytes]:
    """The same upload answered by one process encoding in-process, with the replicas' one thread."""
    from backend.app import create_app

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        app = create_app({**model_settings, "SAM_DATA_DIR": model_settings["SAM_DATA_DIR"] + "-single"})
        client = app.test_client()
        upload = client.post("/api/images", data=data, content_type="image/png").get_json()
        body = client.get(upload["embedding_url"]).data
        app.extensions["sam"].encoder.close()
        return upload["id"], body
    finally:
        torch.set_num_threads(previous)


def test_an_upload_encoded_on_the_cluster_is_byte_identical_to_single_process(web_a, model_settings):
    data = _photo(0)
    upload = requests.post(web_a.url + "/api/images", data=data, headers={"Content-Type": "image/png"}, timeout=300)
    assert upload.status_code == 200, upload.text
    body = requests.get(web_a.url + upload.json()["embedding_url"], timeout=60).content
    expected_id, expected = _single_process_embedding(model_settings, data)
    assert upload.json()["id"] == expected_id
    assert body == expected


def _upload_until_done(url: str, data: bytes, deadline: float) -> tuple[list[int], dict]:
    """Posts until 200; every answer before must be 503 with Retry-After. Returns (statuses, final JSON)."""
    statuses = []
    while True:
        response = requests.post(url + "/api/images", data=data, headers={"Content-Type": "image/png"}, timeout=300)
        statuses.append(response.status_code)
        if response.status_code == 200:
            return statuses, response.json()
        assert response.status_code == 503, response.text
        assert response.json()["error"] and int(response.headers["Retry-After"]) >= 1
        assert time.monotonic() < deadline, f"still refused after retries: {statuses}"
        time.sleep(min(int(response.headers["Retry-After"]), 3))


def _replicas():
    import ray

    return [
        actor
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if "SamEncoder" in actor["name"] and actor["name"].startswith("SERVE_REPLICA")
    ]


def test_killing_a_replica_mid_burst_loses_no_request(web_a, encoder):
    import ray

    if not ray.is_initialized():
        ray.init(address=encoder, log_to_driver=False, configure_logging=False)
    before = _replicas()
    assert len(before) == 2, before
    images = [_photo(100 + i) for i in range(10)]
    deadline = time.monotonic() + 400
    with concurrent.futures.ThreadPoolExecutor(len(images)) as pool:
        futures = [pool.submit(_upload_until_done, web_a.url, data, deadline) for data in images]
        time.sleep(1.5)  # the burst is in the replicas' queues
        victim = ray.get_actor(before[0]["name"], namespace=before[0]["namespace"])
        ray.kill(victim, no_restart=True)
        results = [future.result() for future in futures]
    assert all(statuses[-1] == 200 for statuses, _ in results)
    assert len({body["id"] for _, body in results}) == len(images)
    # Serve replaces the killed replica.
    while len(_replicas()) < 2 or before[0]["name"] in {a["name"] for a in _replicas()}:
        assert time.monotonic() < deadline + 120, "the killed replica was not replaced"
        time.sleep(1)
    again, body = _upload_until_done(web_a.url, _photo(100), time.monotonic() + 60)
    assert again == [200] and body["cache_hit"] is True
