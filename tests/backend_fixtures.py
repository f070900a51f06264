"""Shared helpers for the backend tests: one vit_t model per test process, image bytes, a fake encoder.

The model is cached at module level (not a per-module fixture) so every test file that needs it shares it.
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


@functools.cache
def vit_t_model(checkpoint: str):
    """The reference vit_t (seeded random MobileSAM) in exact fp32 on the CPU."""
    from backend.model_runner import prepare_model
    from backend.sam import sam_model_registry

    model = sam_model_registry["vit_t"](checkpoint=checkpoint)
    prepare_model(model, __import__("torch").device("cpu"), "fp32")
    return model


def reference_meta(reference_dir: Path, name: str) -> dict[str, Any]:
    """A reference case's description: ``<name>.json`` (config, checkpoint, image, prompts, arrays file)."""
    return json.loads((reference_dir / f"{name}.json").read_text())


def reference_case(reference_dir: Path, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A reference case's description and its arrays (the reference implementation's outputs), in memory."""
    meta = reference_meta(reference_dir, name)
    with np.load(reference_dir / meta["arrays"]) as arrays:
        return meta, {key: arrays[key] for key in arrays.files}


@functools.cache
def session_data_dir() -> Path:
    """One data dir per test process, so exported decoders are built once and reused by every app."""
    path = Path(tempfile.mkdtemp(prefix="sam-test-data-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def free_port() -> int:
    """A loopback TCP port that nothing listens on (free when this returns)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def image_bytes(pixels: np.ndarray, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def distinct_image(seed: int, size: tuple[int, int] = (24, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


class FakeEncoder:
    """Stands in for the forward pass: records batch sizes, can be held on a gate, sleeps ``delay_s``.

    Embeddings are a deterministic function of the image so tests can tell images apart.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_next = False
        self.poison_shape = None  # Any batch holding an image of this shape fails.

    def __call__(self, images: Sequence[np.ndarray]):
        self.started.set()
        self.gate.wait()
        self.batches.append(len(images))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated encoder failure")
        if any(image.shape == self.poison_shape for image in images):
            raise ValueError("simulated bad image")
        time.sleep(self.delay_s)
        out = []
        for image in images:
            value = float(image.mean()) / 255.0
            scale = 1024 / max(image.shape[:2])
            input_size = (int(image.shape[0] * scale + 0.5), int(image.shape[1] * scale + 0.5))
            embedding = np.full((256, 64, 64), value, np.float32)
            embedding[:, 0, 0] = np.arange(256, dtype=np.float32) / 256.0
            out.append((embedding, input_size))
        return out
