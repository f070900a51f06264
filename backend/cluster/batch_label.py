"""Automated labelling with text prompts (the data-engine story): every image of a folder, every instance of the
phrases, one COCO instance file.

    python -m backend label --text "dog,cat" --input DIR --output DIR [--checkpoint C --model-type T]
        [--text-model M] [--box-threshold B] [--text-threshold T] [--max-instances N] [--device D]
        [--ray-address ADDR|local [--ray-workers N] [--no-wait]]

The text detector (``SAM_TEXT_MODEL``'s loading: a folder, a hub id, or the random stand-in) finds the boxes,
SAM (``SamPredictor``, one batched box-prompt run per image) turns each into a mask. The output is
``DIR/instances.json``: COCO instances with one category per phrase (ids in the order given) and masks as
compressed RLE, plus ``predicted_iou`` (SAM's) and ``score`` (the detector's) per annotation.

Resumable as ``amg`` is (backend/cluster/batch_amg.py, whose machinery this reuses): each image's annotations
are kept in ``DIR/images/NAME.json`` as it finishes, a rerun labels only the images without one, and
``instances.json`` is rebuilt from them at the end; a run with other settings is refused. With
``--ray-address`` Ray Data actors (one model pair each) label the images and this process writes the files; the
pool is ``amg``'s (``batch_amg.label_on_ray``): sized from what the cluster has free, saying why when nothing can
be placed, and ``--no-wait`` exits with code 3 instead of waiting.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from . import batch_amg
from .batch_amg import BatchError, Target

INSTANCES_FILE = "instances.json"
PER_IMAGE_DIR = "images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", required=True, help='what to find, comma-separated phrases: "dog,cat"')
    parser.add_argument("--input", required=True, help="an image, or a folder whose images are all labelled")
    parser.add_argument("--output", required=True, help=f"folder for {INSTANCES_FILE} (and the per-image parts)")
    parser.add_argument("--model-type", default="vit_t", help="vit_h (= default), vit_l, vit_b or vit_t")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="the SAM checkpoint of that model type (default: seeded random vit_t weights, flagged in the output)",
    )
    parser.add_argument(
        "--text-model",
        default=None,
        help="text detector: a hub id or a save_pretrained folder (default: SAM_TEXT_MODEL, else Grounding DINO tiny)",
    )
    parser.add_argument("--box-threshold", type=float, default=None, help="least detection score kept (default 0.35)")
    parser.add_argument("--text-threshold", type=float, default=None, help="least phrase-token score (default 0.25)")
    parser.add_argument("--max-instances", type=int, default=None, help="most instances per image (default 20)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when present, else CPU)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per model (default: torch's; on Ray at most the CPUs one node has free)",
    )
    from .ray_pool import add_cluster_arguments

    add_cluster_arguments(
        parser.add_argument_group("Ray"),
        workers_help="at most this many model actors, each a SAM and a detector (default: as many as the cluster "
        "can hold, one GPU each when it has GPUs, else --threads CPUs each); the run starts with those that fit in "
        "what is free",
    )


def main(args: argparse.Namespace, stream: IO[str] | None = None) -> int:
    """Runs the `label` subcommand; returns the exit code (as ``amg``'s: batch_amg.run_command)."""
    from ..text.grounding import BadText

    return batch_amg.run_command(_run_from_args, args, stream, usage_errors=(BadText,))


def _run_from_args(args: argparse.Namespace, stream: IO[str]) -> None:
    from ..text.grounding import parse_parameters, parse_phrases

    phrases = parse_phrases(args.text)
    raw = {"box_threshold": args.box_threshold, "text_threshold": args.text_threshold}
    raw["max_instances"] = args.max_instances
    params = parse_parameters({k: v for k, v in raw.items() if v is not None})
    from ..sam import sam_model_registry

    sam_model_registry[args.model_type]  # An unknown type fails here, before any image is read.
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise BatchError(f"checkpoint {args.checkpoint} is not a file")
    text_model = args.text_model or os.environ.get("SAM_TEXT_MODEL") or _default_text_model()
    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else None
    run(
        args.input,
        args.output,
        phrases,
        dataclasses.asdict(params),
        build_sam=functools.partial(_build_sam, args.model_type, checkpoint),
        build_grounder=functools.partial(_build_grounder, text_model),
        model_id={
            "model_type": args.model_type,
            "checkpoint": Path(checkpoint).name if checkpoint else "random",
            "text_model": text_model,
        },
        **batch_amg.run_options(args, stream),
    )


def _default_text_model() -> str:
    from ..text.weights import DEFAULT_TEXT_MODEL

    return DEFAULT_TEXT_MODEL


def _build_sam(model_type: str, checkpoint: str | None):
    if checkpoint is None:
        from ..services.weights import random_model

        return random_model()
    return batch_amg._load_checkpoint(model_type, checkpoint)


def _build_grounder(text_model: str):
    """The detector as the server loads it (a folder, the data dir's hub cache, a download, or the random one)."""
    from ..text.weights import load_grounder

    settings = types.SimpleNamespace(
        text_model=text_model,
        text_revision=os.environ.get("SAM_TEXT_REVISION") or None,
        text_bf16=False,
        data_dir=os.environ.get("SAM_DATA_DIR") or str(Path.home() / ".cache" / "sam-web"),
        allow_download=os.environ.get("SAM_ALLOW_DOWNLOAD", "1").lower() not in ("0", "false", "no", "off"),
    )
    grounder, _ = load_grounder(settings)
    return grounder


def run(
    input_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    phrases: list[str],
    params: dict[str, Any],
    *,
    build_sam: Callable[[], Any],
    build_grounder: Callable[[], Any],
    model_id: dict[str, Any],
    device: str | None = None,
    threads: int | None = None,
    ray_address: str | None = None,
    ray_workers: int | None = None,
    wait: bool = True,
    stream: IO[str] | None = None,
) -> dict[str, int]:
    """Labels every image of ``input_path`` not yet done in ``output_dir`` and writes ``instances.json``.
    ``build_sam``/``build_grounder``: picklable callables returning the Sam (CPU) and the TextGrounder. Returns
    counts: labelled, skipped (already done), failed (unreadable images; the next run retries them).

    threads, ray_address, ray_workers, wait: as for ``amg`` (batch_amg.run): the same threads give the same
    outputs locally and on Ray; on Ray the default is ray_pool.threads_per_actor, and with ``wait`` False a
    cluster without room for one actor raises ray_pool.ClusterFull instead of waiting."""
    batch_amg.check_threads(threads)
    targets = batch_amg.find_targets(input_path)
    output = Path(output_dir)
    parts = output / PER_IMAGE_DIR
    parts.mkdir(parents=True, exist_ok=True)
    return batch_amg.run_batch(
        targets,
        TextLabeller,
        dict(build_sam=build_sam, build_grounder=build_grounder, phrases=phrases, params=params, device=device),
        output=output,
        parts=parts,
        output_mode="coco_rle",
        settings={"model": model_id, "phrases": phrases, "parameters": params},
        threads=threads,
        ray_address=ray_address,
        ray_workers=ray_workers,
        wait=wait,
        stream=stream,
        before_summary=functools.partial(write_instances, output, targets, phrases),
    )


class TextLabeller(batch_amg.BatchLabeller):
    """One SAM predictor and one text detector: ``label``'s labeller."""

    def __init__(self, build_sam, build_grounder, phrases, params, device, threads) -> None:
        import torch

        from ..sam import SamPredictor
        from ..text.grounding import GroundingParameters

        torch.set_num_threads(threads)
        self.predictor = SamPredictor(build_sam().to(batch_amg._device(device)).eval())
        self.grounder = build_grounder()
        self.phrases = phrases
        self.params = GroundingParameters(**params)

    def label(self, target: Target) -> dict[str, Any]:
        """``{"files": {"": bytes of {"image", "annotations"}}, "masks": n}`` or ``{"error": text}``."""
        import torch

        from ..sam.amg import area_from_rle, batched_mask_to_box, box_xyxy_to_xywh, coco_encode_rle, mask_to_rle_pytorch
        from ..services.images import ImageError, decode_image

        try:
            pixels = decode_image(Path(target.path).read_bytes()).pixels
        except (OSError, ImageError) as error:
            return {"error": str(error)}
        height, width = pixels.shape[:2]
        instances = self.grounder.ground(pixels, self.phrases, self.params)
        annotations = []
        if instances:
            self.predictor.set_image(pixels)
            boxes = torch.tensor([instance.box for instance in instances], dtype=torch.float32)
            transformed = self.predictor.transform.apply_boxes_torch(boxes, (height, width))
            with torch.inference_mode():
                masks, ious, _ = self.predictor.predict_torch(
                    None, None, boxes=transformed.to(self.predictor.device), multimask_output=False
                )
            masks = masks[:, 0].cpu()
            rles = mask_to_rle_pytorch(masks)
            # COCO's bbox is the mask's (inclusive pixel edges, as amg's); the detector's box is kept beside it.
            mask_boxes = box_xyxy_to_xywh(batched_mask_to_box(masks)).tolist()
            for instance, rle, iou, mask_box in zip(instances, rles, ious[:, 0].tolist(), mask_boxes, strict=True):
                annotations.append(
                    {
                        "category": instance.label,
                        "segmentation": coco_encode_rle(rle),
                        "area": area_from_rle(rle),
                        "bbox": mask_box,
                        "detector_box": [round(v, 3) for v in instance.box],
                        "score": round(instance.score, 5),
                        "predicted_iou": round(float(iou), 5),
                    }
                )
        image = {"file_name": Path(target.path).name, "width": int(width), "height": int(height)}
        document = json.dumps({"image": image, "annotations": annotations}).encode()
        return {"files": {"": document}, "masks": len(annotations)}


def write_instances(output: Path, targets: list[Target], phrases: list[str]) -> Path:
    """``instances.json`` from the per-image parts present: COCO images, annotations, one category per phrase."""
    categories = [{"id": i + 1, "name": phrase, "supercategory": "object"} for i, phrase in enumerate(phrases)]
    category_ids = {phrase: i + 1 for i, phrase in enumerate(phrases)}
    images, annotations = [], []
    for target in targets:
        part = batch_amg.output_path(output / PER_IMAGE_DIR, target, "coco_rle")
        if not part.is_file():
            continue
        done = json.loads(part.read_text())
        image_id = target.image_id + 1  # COCO ids start at 1
        images.append({"id": image_id, **done["image"]})
        for annotation in done["annotations"]:
            category = annotation.pop("category")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[category],
                    "iscrowd": 0,
                    **annotation,
                }
            )
    document = {
        "info": {"description": f"text-prompt labels for {', '.join(phrases)} (python -m backend label)"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    path = output / INSTANCES_FILE
    partial = output / f".{INSTANCES_FILE}{batch_amg.PARTIAL_MARK}{uuid.uuid4().hex}"
    batch_amg._write_file(partial, json.dumps(document).encode())
    os.replace(partial, path)
    return path
