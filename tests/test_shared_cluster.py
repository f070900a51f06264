"""Batch labelling and everything jobs on a cluster that also serves the encoder (issue #27), with the real parts:
a Ray head of 2 CPUs on 127.0.0.1, the encoder deployed on it with one replica (1 CPU), a web host using it,
and `python -m backend amg --ray-address` as a user runs it.

The session's Ray cluster (cluster_fixtures.ray_address) has 4 CPUs and test_cluster's two replicas on it, so
this module starts its own 2-CPU head: the replica then holds half of it, as in the issue.
"""

from __future__ import annotations

import filecmp
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from backend_fixtures import image_bytes
from cluster_fixtures import (
    RANDOM_WEIGHTS_AMG,
    RAY_ENV,
    WebHost,
    started_ray_head,
    vit_t_checkpoint,
    write_images,
)

from backend.cluster.ray_pool import EXIT_CLUSTER_FULL

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[1]
# Holds CPUs of the cluster from its own driver process until its stdin closes (the driver's exit frees them).
HOLDER = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
@ray.remote
class CpuHolder:
    def ready(self):
        return True
holder = CpuHolder.options(num_cpus=float(sys.argv[2])).remote()
ray.get(holder.ready.remote())
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shared")
    write_images(folder / "images", 3)
    return folder


@pytest.fixture(scope="module")
def checkpoint(workdir):
    return vit_t_checkpoint(workdir)


@pytest.fixture(scope="module")
def shared_cluster(checkpoint, workdir):
    """A 2-CPU Ray head with the encoder deployed (1 replica of 1 thread): one CPU is left free."""
    pytest.importorskip("ray", reason="the cluster extra is not installed (pip install '.[cluster]')")
    head = started_ray_head(num_cpus=2)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "backend", "deploy-encoder", "--ray-address", head.address, "--replicas", "1"],
            cwd=REPO_ROOT,
            env={**os.environ, **RAY_ENV, **_model_settings(checkpoint, workdir)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        yield head.address
    finally:
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def web_host(shared_cluster, checkpoint, workdir):
    host = WebHost({**_model_settings(checkpoint, workdir), "SAM_RAY_ADDRESS": shared_cluster}, workdir)
    try:
        host.wait_ready()
        yield host
    finally:
        host.stop()


def _model_settings(checkpoint: Path, workdir: Path) -> dict[str, str]:
    return {
        "SAM_MODEL_TYPE": "vit_t",
        "SAM_CHECKPOINT": str(checkpoint),
        "SAM_ALLOW_DOWNLOAD": "0",
        "SAM_DEVICE": "cpu",
        "SAM_PRECISION": "fp32",
        "SAM_DATA_DIR": str(workdir / "data"),
    }


def _amg(checkpoint: Path, workdir: Path, output: Path, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "backend", "amg", "--checkpoint", str(checkpoint), "--model-type", "vit_t"]
    command += ["--input", str(workdir / "images"), "--output", str(output), "--device", "cpu", "--threads", "1"]
    for name, value in RANDOM_WEIGHTS_AMG.items():
        command += ["--" + name.replace("_", "-"), str(value)]
    return command + list(extra)


def _run(command: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=REPO_ROOT, env={**os.environ, **RAY_ENV}, capture_output=True, text=True, timeout=timeout
    )


def _upload(host: WebHost, seed: int) -> requests.Response:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    return requests.post(
        host.url + "/api/images", data=image_bytes(pixels), headers={"Content-Type": "image/png"}, timeout=300
    )


def test_amg_starts_with_the_free_cpu_and_matches_the_local_run(shared_cluster, checkpoint, workdir, web_host):
    local = _run(_amg(checkpoint, workdir, workdir / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    started = time.monotonic()
    on_ray = _run(_amg(checkpoint, workdir, workdir / "ray", "--ray-address", shared_cluster))
    elapsed = time.monotonic() - started
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    assert "3 labelled, 0 skipped, 0 failed" in on_ray.stderr
    assert "waiting for the cluster" not in on_ray.stderr  # one CPU was free: it started at once
    print(f"amg --ray-address on the shared 2-CPU cluster, 3 images: {elapsed:.1f} s")
    expected = sorted(p.relative_to(workdir / "local") for p in (workdir / "local").rglob("*") if p.is_file())
    got = sorted(p.relative_to(workdir / "ray") for p in (workdir / "ray").rglob("*") if p.is_file())
    assert expected == got and len(expected) > 6
    for name in expected:
        assert filecmp.cmp(workdir / "local" / name, workdir / "ray" / name, shallow=False), name
    # The encoder replica kept its CPU and still answers.
    upload = _upload(web_host, 1)
    assert upload.status_code == 200, upload.text
    assert upload.json()["cache_hit"] is False


def test_a_full_cluster_says_why_and_queues_everything_jobs(shared_cluster, checkpoint, workdir, web_host):
    image_id = _upload(web_host, 2).json()["id"]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, shared_cluster, "1"],
        cwd=REPO_ROOT,
        env={**os.environ, **RAY_ENV},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        # --no-wait: the reason (what was asked, what is free, what holds it) and exit code 3.
        started = time.monotonic()
        refused = _run(
            _amg(checkpoint, workdir, workdir / "full-no-wait", "--ray-address", shared_cluster, "--no-wait")
        )
        assert time.monotonic() - started < 30
        assert refused.returncode == EXIT_CLUSTER_FULL, refused.stderr[-3000:]
        assert "cannot place one actor of 1 CPU: the cluster has 0 of 2 CPU free" in refused.stderr
        assert "ServeReplica:sam-encoder:SamEncoder" in refused.stderr and "CpuHolder" in refused.stderr
        assert "Traceback" not in refused.stderr

        # Waiting: the same reason and a bar at 0 within 30 s, and nothing written.
        waiting = subprocess.Popen(
            _amg(checkpoint, workdir, workdir / "full-wait", "--ray-address", shared_cluster),
            cwd=REPO_ROOT,
            env={**os.environ, **RAY_ENV, "PYTHONUNBUFFERED": "1"},
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        try:
            lines = _lines_within(waiting.stderr, 30, until=lambda line: line.startswith("[....."))
            assert any("waiting for the cluster: cannot place one actor of 1 CPU" in line for line in lines), lines
            assert lines[-1].startswith("[" + "." * 30 + "] 0/3 "), lines
            assert waiting.poll() is None
        finally:
            waiting.terminate()
            waiting.wait(60)
            waiting.stderr.close()
        assert [p for p in (workdir / "full-wait").iterdir() if not p.name.startswith(".")] == []

        # An everything job shows queued with the reason, never running while nothing runs.
        params = {k: RANDOM_WEIGHTS_AMG[k] for k in ("points_per_side", "pred_iou_thresh", "stability_score_thresh")}
        params["stability_score_offset"] = RANDOM_WEIGHTS_AMG["stability_score_offset"]
        job = requests.post(f"{web_host.url}/api/images/{image_id}/everything", json=params, timeout=60)
        assert job.status_code == 202, job.text
        job_url = f"{web_host.url}/api/everything/{job.json()['job_id']}"
        deadline = time.monotonic() + 30
        while "cannot place" not in (body := requests.get(job_url, timeout=60).json()).get("message", ""):
            assert body["status"] == "queued", body
            assert time.monotonic() < deadline, body
            time.sleep(0.3)
        assert body["status"] == "queued" and body["progress"] == 0
        assert "cannot place one everything task of 1 CPU: the cluster has 0 of 2 CPU free" in body["message"]
    finally:
        holder.stdin.close()  # The holder's driver exits: its CPU is free again.
        holder.wait(60)
        holder.stdout.close()
    # Once the CPU is free, the queued job runs to the end.
    deadline = time.monotonic() + 300
    while (body := requests.get(job_url, timeout=60).json())["status"] not in ("done", "error"):
        assert body["status"] in ("queued", "running"), body
        assert time.monotonic() < deadline, body
        time.sleep(0.3)
    assert body["status"] == "done" and "message" not in body, body
    assert len(body["result"]["annotations"]) >= 1


def _lines_within(stream, timeout_s: float, until) -> list[str]:
    """Lines of ``stream`` until one satisfies ``until``; fails if that takes more than ``timeout_s``."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in stream], daemon=True).start()
    seen, deadline = [], time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"not within {timeout_s:.0f} s: {seen}") from None
        seen.append(line)
        if until(line):
            return seen
