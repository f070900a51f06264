"""SAM 2.1 on the Ray Serve encoder (issue #24): the deployment's replicas return SAM 2's three tensors, and a web
host with SAM_RAY_ADDRESS serves them as an in-process encoder would.

The Ray head comes from cluster_fixtures; the encoder is deployed with the command line (`python -m backend
deploy-encoder`, 1 replica of 1 thread) on the seeded random sam2.1_hiera_t (no weights offline).
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from backend_fixtures import image_bytes
from cluster_fixtures import RAY_ENV

from backend.services import codec

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "SAM_MODEL_TYPE": "sam2.1_hiera_t",
    "SAM_ALLOW_DOWNLOAD": "0",
    "SAM_DEVICE": "cpu",
    "SAM_PRECISION": "fp32",
    "SAM_SECRET": "cluster-sam2-test-secret",
}


@pytest.fixture(scope="module")
def sam2_encoder(ray_address, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("cluster-sam2")
    command = [sys.executable, "-m", "backend", "deploy-encoder", "--ray-address", ray_address]
    command += ["--replicas", "1", "--threads", "1"]
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, **RAY_ENV, **SETTINGS, "SAM_DATA_DIR": str(data_dir / "replica")},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "deployed sam-encoder: 1 replica(s)" in result.stdout
    return ray_address, data_dir


def _upload_through_a_web_host(ray_address: str, data_dir: Path, pixels: np.ndarray) -> dict:
    """An in-process web host with SAM_RAY_ADDRESS: the upload's info and the f32 features it serves."""
    import ray

    from backend.server.app import create_app

    app = create_app(
        {**SETTINGS, "SAM_RAY_ADDRESS": ray_address, "SAM_DATA_DIR": str(data_dir / "web"), "decoders": []}
    )
    try:
        client = app.test_client()
        upload = client.post("/api/images", data=image_bytes(pixels), content_type="image/png")
        assert upload.status_code == 200, upload.get_json()
        info = upload.get_json()
        assert info["model_family"] == "sam2.1" and info["format"] == codec.SAM2_DEFAULT_FORMAT
        stats = app.extensions["sam"].encoder.stats()
        assert stats["remote"] == "sam-encoder" and stats["images_encoded"] == 1  # by the cluster
        return codec.decode_sam2_features(client.get(f"/api/embeddings/{info['id']}?format=f32").data)
    finally:
        app.extensions["sam"].encoder.close()
        app.extensions["everything"].close()
        # This process is a driver of the session's Ray head: leave before the head stops, or Ray ends the process.
        ray.shutdown()


def test_a_sam2_upload_is_encoded_by_the_cluster_into_the_three_tensors(sam2_encoder):
    from backend.services.model_runner import encode_images
    from backend.services.weights import load_model

    ray_address, data_dir = sam2_encoder
    pixels = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    # In a thread of its own, as a server's request thread: in the full suite the browser tests' Playwright
    # (sync API) leaves its event loop registered as running in the main thread, and Ray Serve's handle refuses
    # blocking calls from inside a running loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        served = pool.submit(_upload_through_a_web_host, ray_address, data_dir, pixels).result()

    # The same model in this process, with the replica's one thread.
    model, weights = load_model(_config())
    assert weights.weights == "random"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ((embedding, _, high_res),) = encode_images(model, [pixels])
    finally:
        torch.set_num_threads(previous)
    for name, want in zip(codec.SAM2_TENSORS, (embedding, *high_res), strict=True):
        assert served[name].shape == want.shape
        np.testing.assert_allclose(served[name], want, atol=1e-4, err_msg=name)


def _config():
    from backend.config import Config

    return Config.from_env(environ={}, overrides=SETTINGS)
