"""Benchmark: this project's everything mode against Meta's generator formulation, on the same weights and image.

Meta's segment_anything is not installed here, so its SamAutomaticMaskGenerator's algorithm is written out
below (``meta_generate``) over this project's reference modules: per batch of points, ``predict_torch`` (the
reference MaskDecoder, every mask upsampled to full resolution as logits), the IoU filter, the stability
score on the full-resolution logits (torch sums), binarisation, boxes, the crop-edge filter and run-length
encoding of EVERY surviving mask (torch change points), then box NMS, as Meta's ``_process_batch`` and
``_process_crop`` do. Both sides start from the same cached embedding (the encoder is not timed).

The worst case by default: seeded random vit_b (``torch.manual_seed(0)``), the filters opened
(pred_iou_thresh 0, stability_score_thresh 0), so every candidate is post-processed. Each repeat runs both in
fresh processes, interleaved (ours, Meta's, ours, ...); the medians and their ratio are printed (the CPU is
shared: read the ratio, and the load average printed with it).

    .venv/bin/python tests/benchmarks/bench_everything_meta.py --image truck.jpg [--points-per-side 16]
        [--repeats 2] [--model vit_b] [--check] [--against meta|per-prompt]

--against per-prompt compares with this project's generator projecting the image for the first two-way block
once per chunk of points instead of once per image (``image_first_block``; before exporter version 7).

--check also asserts that both give the same masks (count, prompts, IoUs within 1e-4, masks >= 99.9% equal).
Images come from SAM_REFERENCE_DIR/images (benchmarks only). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from reference_data import REFERENCE_DIR  # noqa: E402  (SAM_REFERENCE_DIR, else ../shared/reference)

from backend.sam.amg import (  # noqa: E402
    MaskData,
    batch_iterator,
    batched_nms,
    box_xyxy_to_xywh,
    build_point_grid,
    is_box_near_crop_edge,
)
from backend.sam.automatic import SamAutomaticMaskGenerator  # noqa: E402
from backend.sam.build import sam_model_registry  # noqa: E402
from backend.sam.predictor import SamPredictor  # noqa: E402

OPEN_FILTERS = {
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "stability_score_offset": 1.0,
    "box_nms_thresh": 0.7,
}


def meta_stability(masks: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """Meta's stability score: int16 row sums, then int32 totals, of the two thresholded copies."""
    inter = (masks > threshold + offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    union = (masks > threshold - offset).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return inter / union


def meta_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Meta's batched_mask_to_box: edges from max over masked coordinates, in torch."""
    h, w = masks.shape[-2:]
    in_height = torch.max(masks, dim=-1)[0]
    in_height_coords = in_height * torch.arange(h)[None, :]
    bottom = torch.max(in_height_coords, dim=-1)[0]
    top = torch.min(in_height_coords + h * (~in_height), dim=-1)[0]
    in_width = torch.max(masks, dim=-2)[0]
    in_width_coords = in_width * torch.arange(w)[None, :]
    right = torch.max(in_width_coords, dim=-1)[0]
    left = torch.min(in_width_coords + w * (~in_width), dim=-1)[0]
    empty = (right < left) | (bottom < top)
    return torch.stack([left, top, right, bottom], dim=-1) * (~empty).unsqueeze(-1)


def meta_rle(masks: torch.Tensor) -> list[dict]:
    """Meta's mask_to_rle_pytorch: change points of the column-major flattening, per mask in a Python loop."""
    b, h, w = masks.shape
    flat = masks.permute(0, 2, 1).flatten(1)
    diff = flat[:, 1:] ^ flat[:, :-1]
    change_indices = diff.nonzero()
    out = []
    for i in range(b):
        cur = change_indices[change_indices[:, 0] == i, 1]
        cur = torch.cat([torch.tensor([0]), cur + 1, torch.tensor([h * w])])
        lengths = (cur[1:] - cur[:-1]).tolist()
        counts = [] if flat[i, 0] == 0 else [0]
        out.append({"size": [h, w], "counts": counts + lengths})
    return out


def meta_generate(model, image_size, embedding, points_per_side, points_per_batch=64, **filters) -> list[dict]:
    """Meta's generator for crop_n_layers 0 and no small-region removal, from a cached embedding."""
    predictor = SamPredictor(model)
    h, w = image_size
    input_size = predictor.transform.get_preprocess_shape(h, w, predictor.transform.target_length)
    predictor.set_embedding(embedding, (h, w), input_size)
    points_for_image = build_point_grid(points_per_side) * np.array([[w, h]])
    crop_box = [0, 0, w, h]
    data = MaskData()
    for (points,) in batch_iterator(points_per_batch, points_for_image):
        coords = torch.as_tensor(predictor.transform.apply_coords(points, (h, w)), dtype=torch.float)
        labels = torch.ones(coords.shape[0], dtype=torch.int)
        masks, iou_preds, _ = predictor.predict_torch(
            coords[:, None, :], labels[:, None], multimask_output=True, return_logits=True
        )
        batch = MaskData(
            masks=masks.flatten(0, 1),
            iou_preds=iou_preds.flatten(0, 1),
            points=torch.as_tensor(points.repeat(masks.shape[1], axis=0)),
        )
        del masks
        if filters["pred_iou_thresh"] > 0.0:
            batch.filter(batch["iou_preds"] > filters["pred_iou_thresh"])
        batch["stability_score"] = meta_stability(
            batch["masks"], model.mask_threshold, filters["stability_score_offset"]
        )
        if filters["stability_score_thresh"] > 0.0:
            batch.filter(batch["stability_score"] >= filters["stability_score_thresh"])
        batch["masks"] = batch["masks"] > model.mask_threshold
        batch["boxes"] = meta_boxes(batch["masks"])
        batch.filter(~is_box_near_crop_edge(batch["boxes"], crop_box, [0, 0, w, h]))
        batch["rles"] = meta_rle(batch["masks"])
        del batch["masks"]
        data.cat(batch)
    keep = batched_nms(
        data["boxes"].float(), data["iou_preds"], torch.zeros_like(data["boxes"][:, 0]), filters["box_nms_thresh"]
    )
    data.filter(keep)
    data.to_numpy()
    return [
        {
            "segmentation": data["rles"][i],
            "area": int(sum(data["rles"][i]["counts"][1::2])),
            "bbox": box_xyxy_to_xywh(data["boxes"][i]).tolist(),
            "predicted_iou": float(data["iou_preds"][i]),
            "point_coords": [data["points"][i].tolist()],
            "stability_score": float(data["stability_score"][i]),
        }
        for i in range(len(data))
    ]


def load(model_type: str, image_name: str):
    from PIL import Image

    torch.manual_seed(0)
    model = sam_model_registry[model_type]().eval()
    image = np.array(Image.open(REFERENCE_DIR / "images" / image_name).convert("RGB"))
    return model, image


def embedding_path(model_type: str, image_name: str) -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-everything-{model_type}-seed0-{image_name}.pt"


def run_one(side: str, model_type: str, image_name: str, points_per_side: int, dump: str | None) -> None:
    """One timed run in this process; prints a JSON line."""
    model, image = load(model_type, image_name)
    embedding = torch.load(embedding_path(model_type, image_name))
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    if side == "per-prompt":
        from backend.sam import automatic

        automatic.image_first_block = lambda model, features: None  # every chunk projects the image itself
    if side in ("ours", "per-prompt"):
        generator = SamAutomaticMaskGenerator(
            model, points_per_side=points_per_side, output_mode="uncompressed_rle", **OPEN_FILTERS
        )
        annotations = generator.generate(image, image_embedding=embedding)
    else:
        annotations = meta_generate(model, image.shape[:2], embedding, points_per_side, **OPEN_FILTERS)
    seconds = time.perf_counter() - started
    if dump:
        Path(dump).write_text(json.dumps(annotations))
    print(json.dumps({"side": side, "seconds": seconds, "masks": len(annotations)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--image", default="truck.jpg")
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--check", action="store_true", help="also compare the two results mask for mask")
    parser.add_argument("--against", choices=["meta", "per-prompt"], default="meta")
    parser.add_argument("--one", choices=["ours", "meta", "per-prompt"], help=argparse.SUPPRESS)
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.model, args.image, args.points_per_side, args.dump)
        return

    cached = embedding_path(args.model, args.image)
    if not cached.exists():
        model, image = load(args.model, args.image)
        predictor = SamPredictor(model)
        with torch.no_grad():
            predictor.set_image(image)
        torch.save(predictor.get_image_embedding(), cached)
    times: dict[str, list[float]] = {"ours": [], args.against: []}
    dumps = {side: str(cached.with_suffix(f".{side}.json")) for side in times}
    for repeat in range(args.repeats):
        for side in times:
            command = [sys.executable, __file__, "--one", side, "--model", args.model, "--image", args.image]
            command += ["--points-per-side", str(args.points_per_side)]
            if args.check and repeat == 0:
                command += ["--dump", dumps[side]]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            times[side].append(result["seconds"])
            load_average = os.getloadavg()[0]
            print(
                f"{side}: {result['seconds']:.1f} s, {result['masks']} masks (load average {load_average:.1f})",
                flush=True,
            )
    ours, other = statistics.median(times["ours"]), statistics.median(times[args.against])
    label = "Meta's formulation" if args.against == "meta" else "projecting the image per chunk"
    print(
        f"{args.model}, {args.image}, {args.points_per_side}x{args.points_per_side} grid, filters opened, "
        f"median of {args.repeats}: ours {ours:.1f} s, {label} {other:.1f} s: x{other / ours:.2f}"
    )
    print(
        json.dumps(
            {"ours_s": times["ours"], f"{args.against}_s": times[args.against], "speedup": round(other / ours, 2)}
        )
    )
    if args.check:
        from backend.sam.amg import rle_to_mask

        ours_ann = json.loads(Path(dumps["ours"]).read_text())
        meta_ann = json.loads(Path(dumps[args.against]).read_text())
        assert len(ours_ann) == len(meta_ann), (len(ours_ann), len(meta_ann))
        for a, b in zip(ours_ann, meta_ann, strict=True):
            assert a["point_coords"] == b["point_coords"]
            assert abs(a["predicted_iou"] - b["predicted_iou"]) < 1e-4
            assert (rle_to_mask(a["segmentation"]) == rle_to_mask(b["segmentation"])).mean() >= 0.999
        print(f"check: the {len(ours_ann)} masks agree")


if __name__ == "__main__":
    main()
