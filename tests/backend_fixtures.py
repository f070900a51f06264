"""Shared helpers for the backend tests: seeded random models built once per test process, photos, image bytes,
a fake encoder.

Models come from the project's own registry with ``torch.manual_seed(0)`` (the server's own random fallback for
vit_t), so no test outside the reference-parity ones needs data from outside the repository. They are cached at
module level (not per-module fixtures) so every test file shares them.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backend.services.weights import WeightsInfo

# A SAM with a reduced ViT encoder (the prompt encoder and mask decoder at full size): fast enough to export and
# run everything mode in tests. The same shape as the reference data's reduced model.
REDUCED_VIT_CONFIG: dict[str, Any] = dict(
    encoder_embed_dim=64,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=[1, 3],
    window_size=14,
    use_rel_pos=True,
)


@functools.cache
def vit_t_model():
    """The seeded random vit_t the server falls back to (``backend.services.weights.random_model``), exact fp32, CPU."""
    import torch

    from backend.services.model_runner import prepare_model
    from backend.services.weights import random_model

    model = random_model()
    prepare_model(model, torch.device("cpu"), "fp32")
    return model


def _saved_checkpoint(model, name: str) -> Path:
    """``model``'s state dict saved as ``checkpoints/<name>`` in the session's data dir."""
    import torch

    path = session_data_dir() / "checkpoints" / name
    path.parent.mkdir(exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


@functools.cache
def vit_t_checkpoint() -> Path:
    """``vit_t_model()``'s weights as a checkpoint file (for the CLI, gunicorn and the browser tests' server)."""
    from backend.services.weights import random_model

    return _saved_checkpoint(random_model(), "vit_t_seed0.pth")


@functools.cache
def reduced_sam():
    """A reduced-ViT SAM (``REDUCED_VIT_CONFIG``) with weights drawn after ``torch.manual_seed(0)``, eval mode."""
    import torch

    from backend.sam import build_sam

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_sam(**REDUCED_VIT_CONFIG).eval()


@functools.cache
def reduced_checkpoint() -> Path:
    """``reduced_sam()``'s weights as a checkpoint file."""
    return _saved_checkpoint(reduced_sam(), "reduced_vit_seed0.pth")


@functools.cache
def reduced_config_file() -> Path:
    """The JSON model_export's ``--config-json`` reads: ``REDUCED_VIT_CONFIG`` and, beside it, the checkpoint."""
    path = reduced_checkpoint().with_name("reduced_vit_seed0.json")
    path.write_text(json.dumps({"config": REDUCED_VIT_CONFIG, "checkpoint": reduced_checkpoint().name}))
    return path


# Stand-ins for the photos of the parity data: a wide 3:2 one (the size of the old truck.jpg) and a smaller one.
WIDE_PHOTO = ("coffee", (1800, 1200))
SMALL_PHOTO = ("chelsea", (800, 534))


@functools.cache
def _photo(name: str, size: tuple[int, int] | None) -> np.ndarray:
    import skimage.data

    pixels = getattr(skimage.data, name)()
    if size is not None:
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR))
    pixels.setflags(write=False)
    return pixels


def photo(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """A photo bundled with scikit-image as HxWx3 uint8 RGB, resized to ``size`` (width, height) if given."""
    return _photo(name, size)


@functools.cache
def photo_jpeg(name: str, size: tuple[int, int] | None = None) -> Path:
    """``photo(name, size)`` saved once as a JPEG file (quality 95); its decoded pixels: ``read_rgb(path)``."""
    path = session_data_dir() / "photos" / (f"{name}-{size[0]}x{size[1]}.jpg" if size else f"{name}.jpg")
    path.parent.mkdir(exist_ok=True)
    Image.fromarray(photo(name, size)).save(path, format="JPEG", quality=95)
    return path


def read_rgb(path: Path) -> np.ndarray:
    """An image file as the server reads it: HxWx3 uint8 RGB."""
    return np.array(Image.open(path).convert("RGB"))


def predictor_for(model, image: np.ndarray):
    """``SamPredictor(model)`` with ``image`` set: the direct path the app's outputs are checked against."""
    from backend.sam import SamPredictor

    predictor = SamPredictor(model)
    predictor.set_image(image)
    return predictor


def model_embedding(model, image: np.ndarray) -> np.ndarray:
    """The model's own [256, 64, 64] embedding of ``image`` (float32), computed with ``SamPredictor``."""
    return predictor_for(model, image).get_image_embedding()[0].cpu().numpy()


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


# What /api/model reports for the seeded random vit_t of the tests.
VIT_T_WEIGHTS = WeightsInfo("vit_t", "real", "vit_t-seed0-test", None, "seeded random vit_t for tests")


@contextlib.contextmanager
def vit_t_app(**settings: Any) -> Iterator[Any]:
    """create_app on the seeded random vit_t, fp32, its decoders really exported (into session_data_dir()).

    settings override the config; the encoder's threads are closed on exit.
    """
    from backend.server.app import create_app

    config = {
        "model": vit_t_model(),
        "weights_info": VIT_T_WEIGHTS,
        "data_dir": str(session_data_dir()),
        "precision": "fp32",
        "secret": "test-secret",
        "TESTING": True,
    }
    app = create_app({**config, **settings})
    try:
        yield app
    finally:
        app.extensions["sam"].encoder.close()


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


# A SAM 2.1 with a reduced Hiera trunk (fast to encode; its decoder is full size) for the SAM 2 decoder tests.
SMALL_SAM2_CONFIG = {
    "base": "sam2.1_hiera_t",
    "trunk": {"embed_dim": 8, "num_heads": 1, "stages": [1, 1, 2, 1], "global_att_blocks": [3]},
    "neck": {"backbone_channel_list": [64, 32, 16, 8]},
}
# Random weights make token 0's masks unstable everywhere; scaled up, some prompts keep it, so both branches of
# the single-mask stability fallback are seen (as in the reference data).
SMALL_SAM2_TOKEN0_SCALE = 10.0


def small_sam2():
    """The seeded SMALL_SAM2_CONFIG model (seed 0), token 0's hypernetwork scaled by SMALL_SAM2_TOKEN0_SCALE."""
    import torch

    from backend.sam2 import build_sam2

    torch.manual_seed(0)
    model = build_sam2(SMALL_SAM2_CONFIG)
    with torch.no_grad():
        model.sam_mask_decoder.output_hypernetworks_mlps[0].layers[-1].weight.mul_(SMALL_SAM2_TOKEN0_SCALE)
    return model
