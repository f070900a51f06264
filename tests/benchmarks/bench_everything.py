"""Benchmark of everything mode: a 32x32 point grid on the CPU, and batched decoding against one point at a time.

For each model (the reduced ViT and vit_t reference models, seeded random weights, SAM_REFERENCE_DIR) on its
reference image:

1. A full run of SamAutomaticMaskGenerator (default 32x32 grid, 64 points per batch), time split into
   encoder, decoder batches and post-processing (filters, upsampling, NMS, RLE) as the generator records it.
   The decoder time covers the prompt encoder, the two-way transformer and the upscaling of the masks that
   pass the IoU filter (all of them here); post-processing is everything after (full-resolution upsampling,
   stability, boxes, NMS, RLE of the NMS survivors).
   Random weights give tiny logits, so the default thresholds would drop every mask and post-processing
   would cost nothing; the run uses the reference fixture's permissive thresholds (pred_iou 0, stability 0.6
   at offset 0.01) with box NMS 0.7, so masks survive and post-processing does real work.
2. Batched against one point at a time on the same first --subset grid points: the generator with
   points_per_batch=64 against points_per_batch=1, from the same cached embedding, interleaved, medians.
3. RLE: vectorised uncompressed + COCO string encoding, per mask, on the subset's candidates (no NMS).

    .venv/bin/python tests/benchmarks/bench_everything.py [--models reduced vit_t] [--points-per-side 32]
        [--subset 64] [--repeats 3] [--threads N]

Not collected by pytest (no test_ prefix). Prints a table and one JSON line per model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
# tests/ by its folder, not as a package: a wheel may ship a top-level `tests` package that would shadow it.
sys.path.insert(0, str(REPO_ROOT / "tests"))

from reference_data import REFERENCE_DIR  # noqa: E402  (SAM_REFERENCE_DIR, else ../shared/reference)

from backend.sam.amg import build_point_grid, coco_encode_rle, mask_to_rle_pytorch, rle_to_mask  # noqa: E402
from backend.sam.automatic import SamAutomaticMaskGenerator  # noqa: E402
from backend.sam.build import build_sam, sam_model_registry  # noqa: E402
from backend.sam.predictor import SamPredictor  # noqa: E402

PERMISSIVE = {
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.6,
    "stability_score_offset": 0.01,
    "box_nms_thresh": 0.7,
}


def load_model(name: str):
    if name == "reduced":
        meta = json.loads((REFERENCE_DIR / "reduced_vit_seed0_dog.json").read_text())
        model = build_sam(REFERENCE_DIR / meta["checkpoint"], **meta["config"])
    elif name == "vit_t":
        meta = json.loads((REFERENCE_DIR / "vit_t_seed0_truck.json").read_text())
        model = sam_model_registry["vit_t"](checkpoint=REFERENCE_DIR / "vit_t_seed0.pth")
    else:
        raise SystemExit(f"unknown model {name!r}: choose reduced or vit_t")
    image = np.array(Image.open(REFERENCE_DIR / meta["image"]).convert("RGB"))
    return model.eval(), image


def full_run(model, image, points_per_side: int):
    generator = SamAutomaticMaskGenerator(
        model, points_per_side=points_per_side, output_mode="uncompressed_rle", **PERMISSIVE
    )
    started = time.perf_counter()
    annotations = generator.generate(image)
    wall = time.perf_counter() - started
    return annotations, wall, dict(generator.last_timings)


def timed_subset(model, image, embedding, grid, points_per_batch: int):
    generator = SamAutomaticMaskGenerator(
        model,
        points_per_side=None,
        point_grids=[grid],
        points_per_batch=points_per_batch,
        output_mode="uncompressed_rle",
        **PERMISSIVE,
    )
    started = time.perf_counter()
    annotations = generator.generate(image, image_embedding=embedding)
    return time.perf_counter() - started, generator.last_timings, len(annotations)


def rle_timing(annotations, limit: int = 64):
    masks = torch.from_numpy(np.stack([rle_to_mask(a["segmentation"]) for a in annotations[:limit]]))
    started = time.perf_counter()
    rles = mask_to_rle_pytorch(masks)
    uncompressed = time.perf_counter() - started
    started = time.perf_counter()
    strings = [coco_encode_rle(rle) for rle in rles]
    coco = time.perf_counter() - started
    n = len(rles)
    return {
        "masks": n,
        "mask_hw": list(masks.shape[1:]),
        "uncompressed_ms_per_mask": 1000 * uncompressed / n,
        "coco_string_ms_per_mask": 1000 * coco / n,
        "mean_coco_chars": statistics.mean(len(s["counts"]) for s in strings),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["reduced", "vit_t"])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--subset", type=int, default=64, help="grid points of the batched vs one-at-a-time runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    for name in args.models:
        model, image = load_model(name)
        torch.set_grad_enabled(False)
        annotations, wall, timings = full_run(model, image, args.points_per_side)
        n_points = args.points_per_side**2
        print(
            f"\n[{name}] {image.shape[1]}x{image.shape[0]}, {n_points} points, {len(annotations)} masks: "
            f"total {wall:.1f} s = encoder {timings['encoder']:.2f} s + decoder {timings['decoder']:.1f} s "
            f"({1000 * timings['decoder'] / n_points:.0f} ms/point) + post-processing {timings['postprocess']:.1f} s "
            f"({1000 * timings['postprocess'] / n_points:.0f} ms/point) "
            f"+ other {wall - sum(timings.values()):.1f} s",
            flush=True,
        )

        # Same points, same embedding: batches of 64 against one point per decoder call, interleaved.
        predictor = SamPredictor(model)
        predictor.set_image(image)
        embedding = predictor.get_image_embedding()
        grid = build_point_grid(args.points_per_side)[: args.subset]
        batched, single = [], []
        for _ in range(args.repeats):
            batched.append(timed_subset(model, image, embedding, grid, 64))
            single.append(timed_subset(model, image, embedding, grid, 1))
        assert batched[0][2] == single[0][2], "batched and single runs found different masks"
        b_total = statistics.median(r[0] for r in batched)
        s_total = statistics.median(r[0] for r in single)
        b_dec = statistics.median(r[1]["decoder"] for r in batched)
        s_dec = statistics.median(r[1]["decoder"] for r in single)
        print(
            f"[{name}] {len(grid)} points, median of {args.repeats}: batched(64) {b_total:.2f} s "
            f"(decoder {b_dec:.2f} s), one at a time {s_total:.2f} s (decoder {s_dec:.2f} s): "
            f"speed-up x{s_total / b_total:.2f} total, x{s_dec / b_dec:.2f} decoder",
            flush=True,
        )
        # RLE cost on many masks: the subset's candidates without NMS (random weights make noisy masks, a
        # worst case for run-length encoding).
        candidates = SamAutomaticMaskGenerator(
            model,
            points_per_side=None,
            point_grids=[grid],
            output_mode="uncompressed_rle",
            **{**PERMISSIVE, "box_nms_thresh": 1.0},
        ).generate(image, image_embedding=embedding)
        rle = rle_timing(candidates) if candidates else {}
        if rle:
            print(
                f"[{name}] RLE of {rle['masks']} masks {rle['mask_hw']}: uncompressed "
                f"{rle['uncompressed_ms_per_mask']:.2f} ms/mask, COCO string {rle['coco_string_ms_per_mask']:.2f} "
                f"ms/mask (mean {rle['mean_coco_chars']:.0f} chars)",
                flush=True,
            )
        print(
            json.dumps(
                {
                    "model": name,
                    "points": n_points,
                    "masks": len(annotations),
                    "wall_s": round(wall, 2),
                    "timings_s": {k: round(v, 3) for k, v in timings.items()},
                    "subset_points": len(grid),
                    "batched_s": [round(r[0], 3) for r in batched],
                    "single_s": [round(r[0], 3) for r in single],
                    "speedup_total": round(s_total / b_total, 2),
                    "speedup_decoder": round(s_dec / b_dec, 2),
                    "rle": rle,
                    "threads": torch.get_num_threads(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
