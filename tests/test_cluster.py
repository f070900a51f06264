"""Past one machine with the real parts: a local Ray cluster running the encoder deployment, Debian's
redis-server, and two web hosts as processes on two ports sharing both.

The Ray head (one per session, loopback) and redis-server come from cluster_fixtures; the encoder is deployed
with the command line (`python -m backend deploy-encoder`, 2 replicas of 1 thread) on the seeded random vit_t.
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
    vit_t_checkpoint,
)

from backend.services import codec

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
def encoder(ray_address, model_settings):
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
def hosts(encoder, model_settings, workdir, redis_server):
    """Web hosts A and B: separate processes and ports, one Redis, one encoder deployment."""
    settings = {**model_settings, "SAM_RAY_ADDRESS": encoder, "SAM_REDIS_URL": redis_server.url}
    started = [WebHost(settings, workdir), WebHost(settings, workdir)]
    try:
        for host in started:
            host.wait_ready()
        yield started
    finally:
        for host in started:
            host.stop()


@pytest.fixture(scope="module")
def web_a(hosts):
    return hosts[0]


@pytest.fixture(scope="module")
def web_b(hosts):
    return hosts[1]


def _photo(index: int) -> bytes:
    """Distinct small images: a seeded noise image each (the encoder cost does not depend on content)."""
    pixels = np.random.default_rng(index).integers(0, 256, (48 + index, 64, 3), dtype=np.uint8)
    return image_bytes(pixels)


def _single_process_embedding(model_settings, data: bytes) -> tuple[str, bytes]:
    """The same upload answered by one process encoding in-process, with the replicas' one thread."""
    from backend.server.app import create_app

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


def test_an_upload_on_a_is_served_by_b_byte_identical_to_single_process(web_a, web_b, model_settings):
    data = _photo(0)
    upload = requests.post(web_a.url + "/api/images", data=data, headers={"Content-Type": "image/png"}, timeout=300)
    assert upload.status_code == 200, upload.text
    from_b = requests.get(web_b.url + upload.json()["embedding_url"], timeout=60)
    assert from_b.status_code == 200
    expected_id, expected = _single_process_embedding(model_settings, data)
    assert upload.json()["id"] == expected_id
    assert from_b.content == expected
    # The same image uploaded to B is a hit: B computes the same id and finds A's embedding.
    again = requests.post(web_b.url + "/api/images", data=data, headers={"Content-Type": "image/png"}, timeout=300)
    assert again.json()["id"] == expected_id and again.json()["cache_hit"] is True


def _local_everything(model_settings, embedding: np.ndarray, size: tuple[int, int], params: dict) -> list[dict]:
    from backend.config import Config
    from backend.sam import SamAutomaticMaskGenerator
    from backend.services.model_runner import prepare_model, resolve_device
    from backend.services.weights import load_model

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = Config.from_env(environ={}, overrides=model_settings)
        model, _ = load_model(config)
        prepare_model(model, resolve_device("cpu"), config.precision)
        generator = SamAutomaticMaskGenerator(model, output_mode="coco_rle", **params)
        image = np.zeros((*size, 3), dtype=np.uint8)
        return generator.generate(image, image_embedding=torch.from_numpy(np.array(embedding, dtype=np.float32))[None])
    finally:
        torch.set_num_threads(previous)


def test_an_everything_job_started_on_a_is_polled_to_completion_on_b(web_a, web_b, model_settings):
    data = _photo(1)
    upload = requests.post(web_a.url + "/api/images", data=data, headers={"Content-Type": "image/png"}, timeout=300)
    image_id = upload.json()["id"]
    params = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.6}
    params["stability_score_offset"] = 0.01
    started = requests.post(f"{web_a.url}/api/images/{image_id}/everything", json=params, timeout=60)
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    deadline = time.monotonic() + 300
    seen = set()
    while True:
        poll = requests.get(f"{web_b.url}/api/everything/{job_id}", timeout=60)
        assert poll.status_code == 200, poll.text
        seen.add(poll.json()["status"])
        if poll.json()["status"] in ("done", "error"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    body = poll.json()
    assert body["status"] == "done", body
    annotations = body["result"]["annotations"]
    assert len(annotations) >= 1 and body["result"]["image_id"] == image_id
    assert all(a["segmentation"]["size"] == [49, 64] for a in annotations)
    # The cluster task computed what the generator computes here on the same embedding (one thread, as the task).
    embedding = codec.decode_embedding(
        requests.get(f"{web_b.url}/api/embeddings/{image_id}?format=f32", timeout=60).content
    )
    expected = _local_everything(model_settings, embedding, (49, 64), params)
    assert [a["segmentation"] for a in annotations] == [e["segmentation"] for e in expected]
    assert [a["predicted_iou"] for a in annotations] == [e["predicted_iou"] for e in expected]
    # Asking B for the same job finds A's, result included.
    same = requests.post(f"{web_b.url}/api/images/{image_id}/everything", json=params, timeout=60)
    assert same.json()["job_id"] == job_id and same.json()["cached"] is True


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


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--autoscale", "3:1"], "--autoscale must be MIN:MAX"),
        (["--autoscale", "x"], "--autoscale must be MIN:MAX"),
        (["--replicas", "0"], "--replicas and --threads must be at least 1"),
    ],
)
def test_deploy_encoder_refuses_bad_scaling_before_contacting_the_cluster(flags, message):
    result = subprocess.run(
        [sys.executable, "-m", "backend", "deploy-encoder", "--ray-address", "127.0.0.1:1", *flags],
        cwd=REPO_ROOT,
        env={**os.environ, **RAY_ENV, "SAM_ALLOW_DOWNLOAD": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
