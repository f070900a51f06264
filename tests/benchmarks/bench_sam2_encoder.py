"""SAM 2.1's Hiera encoder on this machine: what `auto` serves against Meta's fp32 formulation, interleaved.

Not a test (pytest does not collect it). Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_sam2_encoder.py [--model-type sam2.1_hiera_t] [--runs 5] [--threads N]

The model is the seeded random `--model-type` (backend.services.weights.random_model, what the server serves
offline), the image a generated 1024 x 768 photo-like pattern. Each run encodes it once on the fp32 path and
once on the path `SAM2Base.set_precision("auto")` picks here, in alternating order, through the server's own
encode function (backend.services.model_runner.encode_images: SAM2ImagePredictor's transforms, then
SAM2Base.image_features). Reported: the path auto picks and why, median wall and process-CPU seconds per image of
each path, their ratio (fp32 / auto; the goal is >= 2x), and the cosine similarity of each of the three tensors
to fp32's.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout, also when not installed

from backend.runtime import encoder_paths  # noqa: E402
from backend.services.model_runner import encode_images  # noqa: E402
from backend.services.weights import random_model  # noqa: E402


def photo_like(height: int = 768, width: int = 1024) -> np.ndarray:
    """Smooth colour gradients with a few discs: structure for the encoder, no file needed."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 90.0)], axis=-1) * 200
    for cx, cy, r in ((300, 300, 120), (700, 450, 180), (850, 200, 70)):
        image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = (230, 60, 40)
    return image.astype(np.uint8)


def timed(model, precision: str, image: np.ndarray) -> tuple[float, float, tuple]:
    model.set_precision(precision)
    wall, cpu = time.perf_counter(), time.process_time()
    (encoded,) = encode_images(model, [image])
    return time.perf_counter() - wall, time.process_time() - cpu, encoded


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="sam2.1_hiera_t")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = random_model(args.model_type).eval()
    caps = encoder_paths.detect("cpu")
    auto = model.set_precision("auto")
    print(
        f"{args.model_type} (seeded random), {caps.describe()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"auto picks: {auto} ({model.encoder_path})")
    image = photo_like()
    timed(model, "fp32", image)  # warm-up of both paths
    timed(model, auto, image)

    seconds = {"fp32": [], auto: []}
    cpu_seconds = {"fp32": [], auto: []}
    outputs = {}
    for run in range(args.runs):
        order = ("fp32", auto) if run % 2 == 0 else (auto, "fp32")
        for precision in order:
            wall, cpu, encoded = timed(model, precision, image)
            seconds[precision].append(wall)
            cpu_seconds[precision].append(cpu)
            outputs[precision] = encoded
    for precision in dict.fromkeys(("fp32", auto)):
        print(
            f"{precision:5s} median {statistics.median(seconds[precision]):.3f} s wall, "
            f"{statistics.median(cpu_seconds[precision]):.3f} s CPU per image (runs: "
            + ", ".join(f"{s:.2f}" for s in seconds[precision])
            + ")"
        )
    wall_ratio = statistics.median(seconds["fp32"]) / statistics.median(seconds[auto])
    cpu_ratio = statistics.median(cpu_seconds["fp32"]) / statistics.median(cpu_seconds[auto])
    print(
        f"fp32 / auto: {wall_ratio:.2f}x wall, {cpu_ratio:.2f}x CPU (goal >= 2x: {'met' if wall_ratio >= 2 else 'NOT met'})"
    )
    exact, fast = outputs["fp32"], outputs[auto]
    names = ("image_embed", "high_res_feats_0", "high_res_feats_1")
    for name, a, b in zip(names, [exact[0], *exact[2]], [fast[0], *fast[2]], strict=True):
        print(f"cosine to fp32, {name}: {cosine(a, b):.6f}")


if __name__ == "__main__":
    main()
