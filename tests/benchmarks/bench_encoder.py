"""Image encoder speed on this machine: the plain fp32 path against each encoder path, and what `auto` picks here.

Not a test (pytest does not collect it). Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_encoder.py [--runs 3] [--models vit_b,vit_t] [--threads N]
        [--omp-wait-policy PASSIVE] [--paths fp32,fused,int8,bf16]

To stand in for a CPU without native bf16 on one that has it, cap oneDNN (torch's bf16 kernels) and MKL:
`ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI MKL_ENABLE_INSTRUCTIONS=AVX512_E1` (check with `ONEDNN_VERBOSE=1`: a bf16
matmul then runs `gemm:jit:bf16` on "AVX-512 with DL Boost" instead of `brg_matmul:avx10_1_512_amx`);
`encoder_paths.detect` honours the cap.
The int8 path (oneDNN) is capped the same way: its matmul reports `brg_matmul:avx512_core_vnni`.

For each model (random weights, torch.manual_seed(0)) the paths run interleaved, `--runs` times each, on one
real photo (dog.jpg from SAM_REFERENCE_DIR/images). Reported per path: median seconds per image, speed-up
over the plain path (ratio of medians), cosine similarity of the embedding to the plain path's, and the IoU
of the masks predicted from that embedding with the masks from the plain embedding, over the prompts of
reduced_vit_seed0_dog.json (single and multi-mask; mean and minimum). The row `auto` would serve on this CPU
is marked: the capabilities and `encoder_paths.choose` (fed with this run's medians) decide it.

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
# tests/ by its folder, not as a package: a wheel may ship a top-level `tests` package that would shadow it.
sys.path.insert(0, str(REPO_ROOT / "tests"))

from reference_data import REFERENCE_DIR  # noqa: E402

from backend.runtime import encoder_paths  # noqa: E402
from backend.sam import SamPredictor, sam_model_registry  # noqa: E402

# The plain reference formulation, fp32: Meta's for vit_b..h (explicit softmax attention), MobileSAM's for
# vit_t (explicit softmax attention, BatchNorm after each convolution, NCHW input).
PLAIN = {"ImageEncoderViT": "fp32 plain (Meta's formulation)", "TinyViT": "fp32 plain (MobileSAM's formulation)"}


def encoder_input(model, image: np.ndarray) -> torch.Tensor:
    predictor = SamPredictor(model)
    resized = predictor.transform.apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None].float()
    return model.preprocess(x)


def configure(model, attn_impl: str, precision: str) -> None:
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


def paths_for(model, precisions: list[str]) -> list[tuple[str, str, str]]:
    """(name, attention implementation, precision) per path; the first is the baseline of the speed-ups."""
    paths = [(encoder_paths.LABELS[p], "sdpa", p) for p in precisions]
    plain = next(name for cls, name in PLAIN.items() if cls in [c.__name__ for c in type(model.image_encoder).__mro__])
    return [(plain, "math", "fp32"), *paths]


def bench_model(model_type: str, precisions: list[str], runs: int, image: np.ndarray, prompts: list[dict]) -> None:
    torch.manual_seed(0)
    model = sam_model_registry[model_type]().eval()
    paths = paths_for(model, precisions)
    x = encoder_input(model, image)
    print(
        f"\n== {model_type}: {sum(p.numel() for p in model.image_encoder.parameters()) / 1e6:.1f}M encoder parameters, "
        f"input {list(x.shape)}, {torch.get_num_threads()} threads, {runs} interleaved runs per path"
    )

    times: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    cpu_times: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    embeddings: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        configure(model, "sdpa", paths[-1][2])
        model.image_encoder(x)  # warm-up: oneDNN kernel creation, allocator
        for run in range(runs):
            for name, attn_impl, precision in paths:
                configure(model, attn_impl, precision)
                seconds, cpu_seconds, out = timed(lambda: model.image_encoder(x))
                times[name].append(seconds)
                cpu_times[name].append(cpu_seconds)
                embeddings[name] = out
                print(f"  run {run + 1}: {name:34s} {seconds:7.2f} s wall {cpu_seconds:7.2f} s CPU", flush=True)

    by_precision: dict[str, tuple[float, float]] = {}
    plain_name = paths[0][0]
    plain = embeddings[plain_name]
    plain_median = statistics.median(times[plain_name])
    plain_cpu_median = statistics.median(cpu_times[plain_name])
    configure(model, paths[0][1], "fp32")
    image_hw = image.shape[:2]
    plain_masks = masks_for(model, plain, image_hw, prompts)
    coverage = np.mean([m.mean() for m in plain_masks])
    print(
        f"\n  {'path':34s} {'wall s':>7s} {'speed-up':>8s} {'CPU s':>7s} {'speed-up':>8s} {'cosine':>10s} {'mask IoU mean/min':>18s}"
    )
    rows = {}
    for name, attn_impl, precision in paths:
        emb = embeddings[name]
        cosine = torch.nn.functional.cosine_similarity(emb.flatten().double(), plain.flatten().double(), dim=0).item()
        ious = [iou(a, b) for a, b in zip(masks_for(model, emb, image_hw, prompts), plain_masks, strict=True)]
        rows[name] = (statistics.median(times[name]), statistics.median(cpu_times[name]), cosine, ious)
        if attn_impl == "sdpa":
            by_precision[precision] = (rows[name][1], cosine)
    auto = auto_pick(model, by_precision)
    for name, (median, cpu_median, cosine, ious) in rows.items():
        mark = "  <- auto here" if name == auto.label else ""
        print(
            f"  {name:34s} {median:7.2f} {plain_median / median:7.2f}x {cpu_median:7.2f} {plain_cpu_median / cpu_median:7.2f}x"
            f" {cosine:10.6f} {np.mean(ious):9.4f}/{min(ious):.4f}{mark}"
        )
    print(f"  (plain-path masks cover {coverage:.1%} of the image on average; {len(plain_masks)} masks)")
    print(f"  auto on this CPU: {auto.label} ({auto.reason})")


def auto_pick(model, by_precision: dict[str, tuple[float, float]]) -> encoder_paths.Choice:
    """What `auto` serves here: the server's decision logic, fed with this run's CPU-time medians and cosines."""
    caps = encoder_paths.detect("cpu")
    encoder = type(model.image_encoder).__name__
    missing = [p for p in encoder_paths.candidates(caps, encoder) if p not in by_precision]
    if missing:
        return encoder_paths.Choice(missing[0], f"path {missing[0]} not benchmarked (--paths)")

    def measure(precision: str) -> tuple[float, float]:
        return by_precision[precision]

    return encoder_paths.choose(caps, encoder, encoder_paths.encoder_key(model), measure, cache_dir=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", default="vit_b,vit_t")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--paths", default="fp32,fused,int8,bf16", help="encoder paths besides the plain one")
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
    caps = encoder_paths.detect("cpu")
    caps_env = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if k in os.environ}
    print(f"CPU: {caps.describe()}" + (f" (as capped by {caps_env})" if caps_env else ""))
    print(
        f"torch {torch.__version__}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for model_type in args.models.split(","):
        bench_model(model_type, args.paths.split(","), args.runs, image, meta["prompts"])


if __name__ == "__main__":
    main()
