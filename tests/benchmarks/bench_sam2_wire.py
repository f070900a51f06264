"""Benchmark of SAM 2's wire: what each of the three tensors needs (f16, int8, int4 per channel), and the bundles.

For the reference data's seeded reduced SAM 2.1 (SAM_REFERENCE_DIR), or with ``--model random`` the server's
seeded random sam2.1_hiera_t, on the reference images and the gallery's (scikit-image's samples), each tensor
alone is sent through one format (the other two stay float32), then each bundle of codec.SAM2_FORMATS; masks are
predicted for a grid of single points (3 candidates each) and for boxes, and compared by IoU with the masks from
the float32 features (target: mean >= 0.99). Reports bytes on the wire with and without gzip (the server's level).

    .venv/bin/python tests/benchmarks/bench_sam2_wire.py [--grid 8] [--boxes 16] [--model reference|random] \
        [--images dog.jpg chelsea.png ...]

Not collected by pytest (no test_ prefix); exits non-zero if the default bundle misses a target.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from reference_data import REFERENCE_DIR  # noqa: E402

from backend.sam2 import SAM2AutomaticMaskGenerator, SAM2ImagePredictor, build_sam2  # noqa: E402
from backend.services import codec  # noqa: E402
from backend.services.gallery import Gallery  # noqa: E402
from backend.services.weights import random_model  # noqa: E402

TARGET_MEAN_IOU = 0.99
TARGET_GZIP_BYTES = 3_000_000
TENSOR_FORMATS = ("int4",)  # int8 of each is in the "int8" bundle; f16 keeps masks (IoU 1.0000 on image_embed)
NAMES = dict(zip(codec.SAM2_TENSORS, ("image_embed", "high_res_feat_s0", "high_res_feat_s1"), strict=True))


def prompts(height: int, width: int, grid: int, boxes: int, seed: int = 0):
    offsets = (np.arange(grid) + 0.5) / grid
    xs, ys = np.meshgrid(offsets * width, offsets * height)
    points = np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)[:, None, :]
    rng = np.random.default_rng(seed)
    corners = np.sort(rng.uniform(0, 1, size=(boxes, 2, 2)), axis=1)
    box_array = np.concatenate([corners[:, 0] * [width, height], corners[:, 1] * [width, height]], axis=1)
    return points, box_array.astype(np.float32)


def masks_for(predictor: SAM2ImagePredictor, features: dict, hw, points, boxes) -> np.ndarray:
    predictor.set_features(
        {
            "image_embed": torch.from_numpy(features["image_embed"])[None],
            "high_res_feats": [torch.from_numpy(features[n])[None] for n in ("high_res_feats_0", "high_res_feats_1")],
        },
        hw,
    )
    # Points decode the shared-image way, as everything mode does (equal to predict() within 1e-5, twice as fast).
    generator = SAM2AutomaticMaskGenerator.__new__(SAM2AutomaticMaskGenerator)
    generator.predictor, generator.multimask_output = predictor, True
    coords = predictor._transforms.transform_coords(torch.from_numpy(points), normalize=True, orig_hw=hw)
    point_masks, _, _ = generator._predict_points(coords, torch.ones(points.shape[:2], dtype=torch.int))
    box_masks, _, _ = predictor.predict(box=boxes, multimask_output=False)
    return np.concatenate([point_masks.numpy().reshape(-1, *hw), box_masks.reshape(-1, *hw)]) > 0


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    intersection = np.logical_and(a, b).sum(axis=(-2, -1))
    union = np.logical_or(a, b).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, intersection / np.maximum(union, 1))


def image_path(name: str) -> Path:
    """A reference image (dog.jpg, truck.jpg, ...) or a gallery sample (astronaut.png, chelsea.png, ...)."""
    reference = REFERENCE_DIR / "images" / name
    if reference.is_file():
        return reference
    gallery = Gallery().path(name)
    if gallery is None:
        raise SystemExit(f"no image {name!r} in the reference data or the gallery")
    return gallery


def gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, codec.EMBEDDING_GZIP_LEVEL, mtime=0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=8, help="points per side (default 8: 64 points)")
    parser.add_argument("--boxes", type=int, default=16)
    parser.add_argument("--images", nargs="*", default=["dog.jpg"])
    parser.add_argument("--skip", nargs="*", default=[], help="bundles not to measure")
    parser.add_argument("--no-tensors", action="store_true", help="only the bundles")
    parser.add_argument(
        "--model",
        choices=("reference", "random"),
        default="reference",
        help="the reference data's reduced SAM 2.1, or the server's seeded random sam2.1_hiera_t",
    )
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    if args.model == "random":
        model = random_model("sam2.1_hiera_t")
    else:
        meta = json.loads((REFERENCE_DIR / "sam2.1_reduced_seed0_dog.json").read_text())
        model = build_sam2(meta["config"], REFERENCE_DIR / "sam2.1_reduced_seed0.pt")
    predictor = SAM2ImagePredictor(model)
    ok = True
    for image_name in args.images:
        image = np.array(Image.open(image_path(image_name)).convert("RGB"))
        hw = image.shape[:2]
        with torch.no_grad():
            predictor.set_image(image)
        f32 = {
            "image_embed": predictor._features["image_embed"][0].numpy(),
            "high_res_feats_0": predictor._features["high_res_feats"][0][0].numpy(),
            "high_res_feats_1": predictor._features["high_res_feats"][1][0].numpy(),
        }
        points, boxes = prompts(*hw, args.grid, args.boxes)
        reference = masks_for(predictor, f32, hw, points, boxes)
        print(
            f"\n{image_name} {hw[1]}x{hw[0]}: {len(reference)} masks ({points.shape[0]} points x 3, {len(boxes)} boxes)"
        )

        print("one tensor quantized, the others float32: mean IoU / min IoU / raw bytes / gzip bytes")
        for name in [] if args.no_tensors else codec.SAM2_TENSORS:
            for fmt in TENSOR_FORMATS:
                record = codec._encode_tensor(f32[name], fmt)
                formats = tuple(fmt if n == name else "f32" for n in codec.SAM2_TENSORS)
                codec.SAM2_FORMATS["_probe"] = formats
                try:
                    decoded = codec.decode_sam2_features(codec.encode_sam2_features(f32, "_probe"))
                finally:
                    del codec.SAM2_FORMATS["_probe"]
                ious = iou(masks_for(predictor, decoded, hw, points, boxes), reference)
                print(
                    f"  {name:17s} {fmt:5s} {ious.mean():.4f} / {ious.min():.4f} / {len(record):>9,} / "
                    f"{gzip_size(record):>9,}"
                )

        print("bundles: mean IoU / min IoU / raw bytes / gzip bytes")
        for fmt in [f for f in codec.SAM2_FORMATS if f not in ("f32", "f16", *args.skip)]:
            wire = codec.encode_sam2_features(f32, fmt)
            decoded = codec.decode_sam2_features(wire)
            ious = iou(masks_for(predictor, decoded, hw, points, boxes), reference)
            zipped = gzip_size(wire)
            mark = " (default)" if fmt == codec.SAM2_DEFAULT_FORMAT else ""
            print(f"  {fmt:15s} {ious.mean():.4f} / {ious.min():.4f} / {len(wire):>9,} / {zipped:>9,}{mark}")
            if fmt == codec.SAM2_DEFAULT_FORMAT and (ious.mean() < TARGET_MEAN_IOU or zipped > TARGET_GZIP_BYTES):
                ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
