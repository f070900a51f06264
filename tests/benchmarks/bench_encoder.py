"""Image encoder speed on this machine: the plain fp32 path against each fast path.

Not a test (pytest does not collect it). Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_encoder.py [--runs 3] [--models vit_b,vit_t] [--threads N]
        [--omp-wait-policy PASSIVE]

For each model (random weights, torch.manual_seed(0)) the paths run interleaved, `--runs` times each, on one
real photo (dog.jpg from SAM_REFERENCE_DIR/images). Reported per path: median seconds per image, speed-up
over the plain path (ratio of medians), cosine similarity of the embedding to the plain path's, and the IoU
of the masks predicted from that embedding with the masks from the plain embedding, over the prompts of
reduced_vit_seed0_dog.json (single and multi-mask; mean and minimum).

Both wall time and process CPU time are reported: on a shared machine the wall time mostly measures how
much of the cores the other processes leave, while CPU time measures the work the path itself needs.
"""

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _omp_wait_policy_from_argv() -> None:
    # libgomp reads OMP_WAIT_POLICY once, when torch loads it, so it must be set before `import torch`.
    for i, arg in enumerate(sys.argv):
        value = arg.split("=", 1)[1] if arg.startswith("--omp-wait-policy=") else None
        if arg == "--omp-wait-policy" and i + 1 < len(sys.argv):
            value = sys.argv[i + 1]
        if value and value.lower() != "inherit":
            os.environ["OMP_WAIT_POLICY"] = value.upper()


_omp_wait_policy_from_argv()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from backend.sam import SamPredictor, sam_model_registry  # noqa: E402
from backend.sam.sam import default_precision  # noqa: E402
from tests.conftest import REFERENCE_DIR  # noqa: E402

# (name, attention implementation, autocast dtype); the first one is the plain reference formulation.
PATHS: list[tuple[str, str, str]] = [
    ("fp32 plain (math attention)", "math", "fp32"),
    ("fp32 + SDPA", "sdpa", "fp32"),
    ("bf16 autocast (math attention)", "math", "bf16"),
    ("bf16 autocast + SDPA (default)", "sdpa", "bf16"),
]


def encoder_input(model, image: np.ndarray) -> torch.Tensor:
    predictor = SamPredictor(model)
    resized = predictor.transform.apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None].float()
    return model.preprocess(x)


def configure(model, attn_impl: str, precision: str) -> None:
    if hasattr(model.image_encoder, "attn_impl"):
        model.image_encoder.attn_impl = attn_impl
    model.set_precision(precision)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, float, torch.Tensor]:
    """Wall seconds and this process's CPU seconds (all threads) of one call."""
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - start_wall, time.process_time() - start_cpu, out


def masks_for(model, embedding: torch.Tensor, image_hw: tuple[int, int], prompts: list[dict]) -> list[np.ndarray]:
    predictor = SamPredictor(model)
    predictor.set_embedding(embedding, image_hw)
    results: list[np.ndarray] = []
    outputs = []
    for prompt in prompts:
        mask_input = None
        if "mask_from" in prompt:
            _, scores, low_res = outputs[prompt["mask_from"]]
            mask_input = low_res[np.argmax(scores)][None]
        out = predictor.predict(
            point_coords=np.array(prompt["points"]) if "points" in prompt else None,
            point_labels=np.array(prompt["labels"]) if "labels" in prompt else None,
            box=np.array(prompt["box"]) if "box" in prompt else None,
            mask_input=mask_input,
            multimask_output=prompt["multimask"],
        )
        outputs.append(out)
        results.extend(out[0])
    return results


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def bench_model(model_type: str, paths, runs: int, image: np.ndarray, prompts: list[dict]) -> None:
    torch.manual_seed(0)
    model = sam_model_registry[model_type]().eval()
    x = encoder_input(model, image)
    print(
        f"\n== {model_type}: {sum(p.numel() for p in model.image_encoder.parameters()) / 1e6:.1f}M encoder parameters, "
        f"input {list(x.shape)}, {torch.get_num_threads()} threads, {runs} interleaved runs per path"
    )

    times: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    cpu_times: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    embeddings: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        configure(model, "sdpa", "bf16")
        model.image_encoder(x)  # warm-up: oneDNN kernel creation, allocator
        for run in range(runs):
            for name, attn_impl, precision in paths:
                configure(model, attn_impl, precision)
                seconds, cpu_seconds, out = timed(lambda: model.image_encoder(x))
                times[name].append(seconds)
                cpu_times[name].append(cpu_seconds)
                embeddings[name] = out
                print(f"  run {run + 1}: {name:34s} {seconds:7.2f} s wall {cpu_seconds:7.2f} s CPU", flush=True)

    plain_name = paths[0][0]
    plain = embeddings[plain_name]
    plain_median = statistics.median(times[plain_name])
    plain_cpu_median = statistics.median(cpu_times[plain_name])
    configure(model, "math", "fp32")
    image_hw = image.shape[:2]
    plain_masks = masks_for(model, plain, image_hw, prompts)
    coverage = np.mean([m.mean() for m in plain_masks])
    print(
        f"\n  {'path':34s} {'wall s':>7s} {'speed-up':>8s} {'CPU s':>7s} {'speed-up':>8s} {'cosine':>10s} {'mask IoU mean/min':>18s}"
    )
    for name, _, _ in paths:
        emb = embeddings[name]
        cosine = torch.nn.functional.cosine_similarity(emb.flatten().double(), plain.flatten().double(), dim=0).item()
        ious = [iou(a, b) for a, b in zip(masks_for(model, emb, image_hw, prompts), plain_masks, strict=True)]
        median = statistics.median(times[name])
        cpu_median = statistics.median(cpu_times[name])
        print(
            f"  {name:34s} {median:7.2f} {plain_median / median:7.2f}x {cpu_median:7.2f} {plain_cpu_median / cpu_median:7.2f}x"
            f" {cosine:10.6f} {np.mean(ious):9.4f}/{min(ious):.4f}"
        )
    print(f"  (plain-path masks cover {coverage:.1%} of the image on average; {len(plain_masks)} masks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", default="vit_b,vit_t")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--omp-wait-policy",
        default="inherit",
        help="PASSIVE lets idle OpenMP threads sleep instead of spin, which matters on a shared machine; "
        "inherit keeps the environment's setting",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    meta = json.loads((REFERENCE_DIR / "reduced_vit_seed0_dog.json").read_text())
    image = np.array(Image.open(REFERENCE_DIR / meta["image"]).convert("RGB"))
    print(
        f"torch {torch.__version__}; default precision on this CPU: {default_precision(torch.device('cpu'))}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; load average {os.getloadavg()[0]:.1f}"
    )
    for model_type in args.models.split(","):
        paths = (
            PATHS
            if model_type != "vit_t"
            else [("fp32 plain", "math", "fp32"), ("bf16 autocast (default)", "sdpa", "bf16")]
        )
        bench_model(model_type, paths, args.runs, image, meta["prompts"])


if __name__ == "__main__":
    main()
