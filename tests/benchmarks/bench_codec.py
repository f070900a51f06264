"""Benchmark of the embedding wire formats: does fp16 / int8 change the masks, what do they cost, does gzip pay?

For the reduced-ViT and vit_t reference models (seeded random weights, SAM_REFERENCE_DIR) and each sample
image, the fp32 embedding is sent through the codec as f16 and int8 and decoded back; masks are predicted from
all three for the reference prompts of that model and for a grid of single points, and the masks from f16 /
int8 are compared with the fp32 ones by IoU (target: mean >= 0.99). Also reports bytes on the wire, codec
times, and gzip sizes and times per format.

    .venv/bin/python tests/benchmarks/bench_codec.py [--grid 8] [--images dog.jpg truck.jpg ...]

Not collected by pytest (no test_ prefix); exits non-zero if a mean IoU is below the target.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
# tests/ by its folder, not as a package: a wheel may ship a top-level `tests` package that would shadow it.
sys.path.insert(0, str(REPO_ROOT / "tests"))

from reference_data import REFERENCE_DIR  # noqa: E402

from backend.sam import SamPredictor, build_sam, sam_model_registry  # noqa: E402
from backend.services import codec  # noqa: E402
from backend.services.model_runner import encode_images, prepare_model  # noqa: E402

TARGET_MEAN_IOU = 0.99
FORMATS = ("f16", "int8")


def load_models():
    reduced = json.loads((REFERENCE_DIR / "reduced_vit_seed0_dog.json").read_text())
    vit_t = json.loads((REFERENCE_DIR / "vit_t_seed0_truck.json").read_text())
    yield "reduced_vit", build_sam(str(REFERENCE_DIR / reduced["checkpoint"]), **reduced["config"]), reduced
    yield "vit_t", sam_model_registry["vit_t"](checkpoint=str(REFERENCE_DIR / "vit_t_seed0.pth")), vit_t


def grid_points(height: int, width: int, per_side: int) -> np.ndarray:
    offsets = (np.arange(per_side) + 0.5) / per_side
    xs, ys = np.meshgrid(offsets * width, offsets * height)
    return np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU over the last two axes; two empty masks agree perfectly."""
    intersection = np.logical_and(a, b).sum(axis=(-2, -1))
    union = np.logical_or(a, b).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, intersection / np.maximum(union, 1))


def predictor_for(model, embedding: np.ndarray, original_size, input_size) -> SamPredictor:
    predictor = SamPredictor(model)
    predictor.set_embedding(embedding, original_size, input_size)
    return predictor


def reference_prompt_masks(predictor: SamPredictor, prompts) -> list:
    """Masks for each reference prompt; ``mask_from`` feeds back the best low-res logits of an earlier one."""
    results, low_res_best = [], {}
    for index, prompt in enumerate(prompts):
        mask_input = None
        if "mask_from" in prompt:
            mask_input = low_res_best[prompt["mask_from"]][None]
        masks, scores, low_res = predictor.predict(
            point_coords=np.array(prompt["points"], np.float32) if prompt.get("points") else None,
            point_labels=np.array(prompt["labels"], np.float32) if prompt.get("labels") else None,
            box=np.array(prompt["box"], np.float32) if prompt.get("box") else None,
            mask_input=mask_input,
            multimask_output=prompt["multimask"],
        )
        low_res_best[index] = low_res[int(np.argmax(scores))]
        results.append(masks)
    return results


def grid_masks(predictor: SamPredictor, points: np.ndarray, chunk: int = 16) -> np.ndarray:
    """[P, 3, H, W] masks for single foreground points (batched through predict_torch)."""
    out = []
    coords = predictor.transform.apply_coords(points, predictor.original_size)
    for start in range(0, len(points), chunk):
        batch = torch.as_tensor(coords[start : start + chunk, None, :], dtype=torch.float32)
        labels = torch.ones(batch.shape[:2], dtype=torch.float32)
        masks, _, _ = predictor.predict_torch(batch, labels, multimask_output=True)
        out.append(masks.cpu().numpy())
    return np.concatenate(out)


def timed(function, repeats: int = 5):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        value = function()
        times.append((time.perf_counter() - started) * 1000)
    return value, statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=int, default=8, help="points per side of the prompt grid (default 8 -> 64)")
    parser.add_argument("--images", nargs="*", default=["dog.jpg", "truck.jpg", "groceries.jpg", "dogs.jpg"])
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    images = {name: np.array(Image.open(REFERENCE_DIR / "images" / name).convert("RGB")) for name in args.images}
    all_ok = True
    wire_rows = []
    print(f"target: mean IoU >= {TARGET_MEAN_IOU} of masks from f16/int8 embeddings vs fp32\n")
    print(
        f"{'model':12} {'image':14} {'prompts':>7}  " + "  ".join(f"{f + ' mean':>10} {f + ' min':>9}" for f in FORMATS)
    )
    for model_name, model, spec in load_models():
        prepare_model(model, torch.device("cpu"), "fp32")
        reference_image = Path(spec["image"]).name
        for image_name, pixels in images.items():
            ((embedding, input_size),) = encode_images(model, [pixels])
            original_size = pixels.shape[:2]
            exact = predictor_for(model, embedding, original_size, input_size)
            points = grid_points(*original_size, args.grid)
            baseline_grid = grid_masks(exact, points)
            prompts = spec["prompts"] if image_name == reference_image else []
            baseline_prompts = reference_prompt_masks(exact, prompts)
            cells = []
            for fmt in FORMATS:
                wire = codec.encode_embedding(embedding, fmt)
                restored = codec.decode_embedding(wire)
                approx = predictor_for(model, restored, original_size, input_size)
                ious = list(iou(grid_masks(approx, points), baseline_grid).ravel())
                for got, want in zip(reference_prompt_masks(approx, prompts), baseline_prompts, strict=True):
                    ious.extend(iou(got, want).ravel())
                mean, low = float(np.mean(ious)), float(np.min(ious))
                all_ok &= mean >= TARGET_MEAN_IOU
                cells.append(f"{mean:10.5f} {low:9.4f}")
                wire_rows.append((model_name, image_name, fmt, wire))
            wire_rows.append((model_name, image_name, "f32", codec.encode_embedding(embedding, "f32")))
            print(
                f"{model_name:12} {image_name:14} {len(points) * 3 + sum(m.shape[0] for m in baseline_prompts):7d}  "
                + "  ".join(cells)
            )

    print("\nwire formats (median over models and images; codec times are median of 5 runs)")
    print(
        f"{'format':6} {'bytes':>10} {'encode ms':>10} {'decode ms':>10} {'gzip-1 ratio':>13} {'gzip-1 ms':>10} {'gzip-6 ratio':>13} {'gzip-6 ms':>10}"
    )
    sample_embedding = codec.decode_embedding(wire_rows[-1][3])
    for fmt in ("f32", "f16", "int8"):
        bodies = [wire for _, _, f, wire in wire_rows if f == fmt]
        _, encode_ms = timed(lambda fmt=fmt: codec.encode_embedding(sample_embedding, fmt))
        _, decode_ms = timed(lambda body=bodies[-1]: codec.decode_embedding(body))
        ratios, times = {}, {}
        for level in (1, 6):
            ratios[level] = statistics.median(len(zlib.compress(body, level)) / len(body) for body in bodies)
            _, times[level] = timed(
                lambda body=bodies[-1], level=level: gzip.compress(body, compresslevel=level, mtime=0), repeats=3
            )
        print(
            f"{fmt:6} {len(bodies[0]):10,d} {encode_ms:10.1f} {decode_ms:10.1f} {ratios[1]:13.3f} {times[1]:10.1f}"
            f" {ratios[6]:13.3f} {times[6]:10.1f}"
        )
    print("\nresult:", "PASS" if all_ok else "FAIL", f"(every mean IoU >= {TARGET_MEAN_IOU})" if all_ok else "")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
