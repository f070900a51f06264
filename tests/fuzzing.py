"""Fuzz inputs for the upload and everything endpoints (hypothesis strategies) and the app they run against:
valid PNG/JPEG/GIF/TIFF/WebP/BMP files mutated (bit flips, overwritten bytes, cuts, inserted junk, patched
header sizes) and JSON bodies (any JSON, parameter objects with wild values, nesting, raw bytes)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

FORMATS = ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP")
PARAMETER_NAMES = (
    "points_per_side",
    "pred_iou_thresh",
    "stability_score_thresh",
    "stability_score_offset",
    "box_nms_thresh",
    "min_mask_region_area",
    "crop_n_layers",
)


def seed_images() -> list[bytes]:
    """Small real files of every accepted format (several sizes and modes)."""
    rng = np.random.default_rng(0)
    files = []
    for fmt in FORMATS:
        for height, width, mode in ((8, 8, "RGB"), (33, 47, "RGB"), (20, 12, "L"), (16, 24, "RGBA")):
            if mode == "RGBA" and fmt in ("JPEG", "BMP"):
                mode = "RGB"
            pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
            image = Image.fromarray(pixels, "RGBA").convert(mode)
            buffer = io.BytesIO()
            image.save(buffer, format=fmt)
            files.append(buffer.getvalue())
    return files


SEEDS = seed_images()


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(("flip", "set", "cut", "insert", "grow")))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from((0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255)))))
        elif kind == "cut":
            data = data[:at]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:  # Header fields claim a bigger image: the bytes that look like a size become large.
            data[at : at + 2] = draw(st.sampled_from((b"\x17\x70", b"\xff\xff", b"\x7f\xff", b"\x00\x00")))
    return bytes(data)


JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12)
ANY_JSON = st.recursive(
    JSON_LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=6,
)
PARAMETER_OBJECTS = st.dictionaries(st.sampled_from(PARAMETER_NAMES) | st.text(max_size=12), ANY_JSON, max_size=8)


@st.composite
def json_bodies(draw) -> bytes:
    kind = draw(st.sampled_from(("parameters", "any", "nested", "raw")))
    if kind == "parameters":
        return json.dumps(draw(PARAMETER_OBJECTS)).encode()
    if kind == "any":
        return json.dumps(draw(ANY_JSON)).encode()
    if kind == "nested":
        depth = draw(st.integers(1, 200_000))
        opener = draw(st.sampled_from((b"[", b'{"a":')))
        return opener * depth + draw(st.sampled_from((b"", b"1", b"]" * depth)))
    return draw(st.binary(max_size=512))


FuzzTarget = Callable[[str, str, bytes, str], int]  # (method, path, body, content type) -> HTTP status


def run_fuzz(send: FuzzTarget, image_id: str, examples: int) -> dict[str, int]:
    """Sends ``examples`` mutated images and ``examples`` JSON bodies through ``send``; returns counts by
    status class and the number of inputs. Derandomized: the same inputs on every run."""
    counts: dict[str, int] = {"inputs": 0, "5xx": 0}

    def record(status: int) -> None:
        counts["inputs"] += 1
        counts[f"{status // 100}xx"] = counts.get(f"{status // 100}xx", 0) + 1

    fuzz_settings = settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )

    @fuzz_settings
    @given(data=mutated_images(), content_type=st.sampled_from(("image/png", "image/jpeg", "application/octet-stream")))
    def uploads(data, content_type):
        record(send("POST", "/api/images", data, content_type))

    @fuzz_settings
    @given(body=json_bodies())
    def everything(body):
        record(send("POST", f"/api/images/{image_id}/everything", body, "application/json"))

    uploads()
    everything()
    return counts


def fuzz_app(data_dir: str):
    """The real app (routes, decoding, validation, jobs) with a stand-in forward pass, limits opened wide so
    every input reaches the code under test; returns (app, send, the id of an uploaded image)."""
    import torch
    from backend_fixtures import FakeEncoder

    from backend.server.app import create_app

    app = create_app(
        {
            "model": torch.nn.Linear(1, 1),
            "encode_batch": FakeEncoder(),
            "decoders": [],
            "data_dir": data_dir,
            "device": "cpu",
            "upload_rate": "1000000/minute",
            "everything_rate": "1000000/minute",
            "everything_jobs_per_client": 1000,
            # A patched header claiming a big image is refused from the header (413) instead of decoding
            # millions of pixels: the decode path is the same, the run 100 times faster.
            "max_pixels": 1_000_000,
            "TESTING": True,
        }
    )
    client = app.test_client()

    def send(method: str, path: str, body: bytes, content_type: str) -> int:
        return client.open(path, method=method, data=body, content_type=content_type).status_code

    upload = client.post("/api/images", data=SEEDS[0], content_type="image/png")
    assert upload.status_code == 200, upload.get_json()
    return app, send, upload.get_json()["id"]
