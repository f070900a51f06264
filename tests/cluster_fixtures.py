"""Shared helpers for the cluster tests: a local Ray head on loopback ports, tiny seeded checkpoints, images."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# A SAM small enough for tests that run everything mode on several images: a 2-block ViT at 256 px input.
TINY_SAM = dict(
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=[1],
    image_size=256,
    window_size=4,
)
# Settings under which random weights give masks (their logits are tiny): as in the reference AMG fixture.
RANDOM_WEIGHTS_AMG = dict(
    points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.6, stability_score_offset=0.01, box_nms_thresh=1.0
)
# The tests' Ray cluster listens on loopback only; token auth would need a token file in the home directory.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_server_port() -> int:
    """A free port below the kernel's ephemeral range (and above Ray's worker ports, 10002-19999): a server
    that binds it only after a minute of start-up must not lose it to some client's outgoing connection."""
    low, _ = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    rng = np.random.default_rng()
    for _ in range(200):
        port = int(rng.integers(20000, max(20001, min(low, 32768))))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def write_images(folder: Path, count: int = 3) -> list[Path]:
    """Small photos from scikit-image (public domain), downscaled so everything mode stays quick."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera")[:count]:
        pixels = getattr(skimage.data, name)()
        image = Image.fromarray(pixels).convert("RGB")
        image = image.resize((image.width // 5, image.height // 5), Image.BILINEAR)
        path = folder / f"{name}.png"
        image.save(path)
        paths.append(path)
    return paths


def tiny_checkpoint(folder: Path):
    """Saves a seeded TINY_SAM checkpoint; returns (path, a picklable builder that loads it)."""
    import torch

    from backend.sam.build import build_sam

    path = folder / "tiny_sam_seed0.pth"
    if not path.exists():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            torch.save(build_sam(None, **TINY_SAM).state_dict(), path)
    return path, functools.partial(build_sam, str(path), **TINY_SAM)


def vit_t_checkpoint(folder: Path) -> Path:
    """The seeded random vit_t of backend.services.weights as a checkpoint file (for the command line)."""
    import torch

    from backend.services.weights import random_model

    path = folder / "vit_t_random.pth"
    if not path.exists():
        torch.save(random_model().state_dict(), path)
    return path


class RayHead:
    """`ray start --head --block` on loopback with free ports and its own temp dir; stopped by its process group."""

    def __init__(self, num_cpus: int = 2) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="sam-ray-")
        self.port = free_port()
        ports = {
            name: free_port()
            for name in (
                "ray-client-server-port",
                "dashboard-port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
                "node-manager-port",
                "object-manager-port",
            )
        }
        command = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={self.temp_dir}",
            *(f"--{name}={port}" for name, port in ports.items()),
        ]
        self.log = open(Path(self.temp_dir) / "head.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **RAY_ENV},
            start_new_session=True,
        )
        self.address = f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        marker = "Ray runtime started"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.log_text()[-2000:]}")
            if marker in self.log_text():
                return
            time.sleep(0.5)
        raise RuntimeError(f"the Ray head did not start in {timeout_s:.0f} s: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        self.log.flush()
        return (Path(self.temp_dir) / "head.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
        # Whatever the head started and did not stop in time (its process group, i.e. only this cluster).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        self.log.close()


def started_ray_head(num_cpus: int, attempts: int = 2) -> RayHead:
    """A ready Ray head; on an overloaded machine Ray's own startup deadline can pass, so try once more."""
    for attempt in range(attempts):
        head = RayHead(num_cpus=num_cpus)
        try:
            head.wait_ready()
            return head
        except RuntimeError:
            head.stop()
            shutil.rmtree(head.temp_dir, ignore_errors=True)
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def ray_address():
    """The address of a Ray cluster started for this test session (os.environ gets RAY_ENV for the drivers)."""
    pytest.importorskip("ray", reason="the cluster extra is not installed (pip install '.[cluster]')")
    previous = {name: os.environ.get(name) for name in RAY_ENV}
    os.environ.update(RAY_ENV)
    # Logical CPUs: the encoder's 2 replicas and the batch tests' 2 actors fit side by side.
    head = started_ray_head(num_cpus=4)
    try:
        yield head.address
    finally:
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def read_mask_folder(folder: Path) -> tuple[list[np.ndarray], list[str]]:
    """The PNG masks (bool) and metadata.csv lines of one image's output folder."""
    lines = (folder / "metadata.csv").read_text().split("\n")
    masks = [np.asarray(Image.open(folder / f"{i}.png")) > 0 for i in range(len(lines) - 1)]
    return masks, lines


class RedisServer:
    """Debian's redis-server on a free loopback port with a temp dir, no persistence, LRU-bounded memory."""

    def __init__(self, maxmemory: str = "256mb") -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sam-redis-")
        self.maxmemory = maxmemory
        self.process: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        import redis

        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", "--appendonly", "no",
                "--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None


@pytest.fixture(scope="session")
def redis_server():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make cluster-deps installs Debian's)")
    pytest.importorskip("redis", reason="the cluster extra is not installed (pip install '.[cluster]')")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


class WebHost:
    """`python -m backend serve` on a free loopback port, as its own process, with the given SAM_* settings."""

    def __init__(self, settings: dict[str, str], log_dir: Path) -> None:
        self.port = free_server_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"web-{self.port}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        repo = Path(__file__).resolve().parents[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=repo,
            env={**os.environ, **RAY_ENV, **settings},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        import requests

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the web host exited: {self.log_path.read_text()[-3000:]}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code in (200, 503):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the web host did not start in {timeout_s:.0f} s: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self.log.close()
