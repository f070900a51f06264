"""Speed and precision of the MobileSAM TinyViT encoder (vit_t) on CPU: float32 against bf16 autocast.

    .venv/bin/python tests/benchmarks/bench_tiny_vit.py [--runs 10] [--threads N] [--batch 1]

Runs are interleaved (fp32, bf16, bf16, fp32, ...) so load from other processes hits both alike; the
figures are medians, and the speed-up is the median of the per-pair ratios. The embedding comparison uses
the seeded reference weights and images/truck.jpg from SAM_REFERENCE_DIR when present (random weights and
a random image otherwise): cosine similarity and max abs difference of the bf16 embedding against fp32.
"""

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
# tests/ by its folder, not as a package (a wheel may ship a top-level `tests` package that would shadow it);
# test_tiny_vit imports backend_fixtures as pytest would.
sys.path.insert(0, str(REPO_ROOT / "tests"))

from reference_data import REFERENCE_DIR  # noqa: E402
from test_tiny_vit import preprocess  # noqa: E402

from backend.sam.build import build_mobile_sam_encoder  # noqa: E402
from backend.sam.tiny_vit import TinyViT  # noqa: E402

PREFIX = "image_encoder."


def load_encoder() -> tuple[TinyViT, str]:
    model = build_mobile_sam_encoder()
    checkpoint = REFERENCE_DIR / "vit_t_seed0.pth"
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict({k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)})
        weights = "seeded reference weights (vit_t_seed0.pth)"
    else:
        weights = "random initialisation"
    return model.eval(), weights


def load_images(batch: int) -> tuple[torch.Tensor, str]:
    image_path = REFERENCE_DIR / "images" / "truck.jpg"
    if image_path.is_file():
        return preprocess(image_path).expand(batch, -1, -1, -1).contiguous(), "truck.jpg"
    torch.manual_seed(0)
    return torch.randn(batch, 3, 1024, 1024), "random image"


def precision_context(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def encode(model: TinyViT, images: torch.Tensor, precision: str) -> tuple[torch.Tensor, float, float]:
    """Returns the embedding, wall seconds and process CPU seconds (all threads) of one forward pass."""
    with torch.inference_mode(), precision_context(precision):
        start, cpu_start = time.perf_counter(), time.process_time()
        embedding = model(images)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return embedding.float(), elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per precision (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per precision first (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward pass (default 1)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, weights = load_encoder()
    images, image_name = load_images(args.batch)
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads; {weights}; {image_name}, batch {args.batch}"
    )

    for _ in range(args.warmup):
        encode(model, images, "fp32")
        encode(model, images, "bf16")

    times = {"fp32": [], "bf16": []}
    cpu_times = {"fp32": [], "bf16": []}
    for run in range(args.runs):
        order = ("fp32", "bf16") if run % 2 == 0 else ("bf16", "fp32")
        for precision in order:
            _, elapsed, cpu = encode(model, images, precision)
            times[precision].append(elapsed)
            cpu_times[precision].append(cpu)

    reference = encode(model, images, "fp32")[0]
    reduced = encode(model, images, "bf16")[0]
    cosine = torch.nn.functional.cosine_similarity(reference.flatten().double(), reduced.flatten().double(), dim=0)
    max_abs = (reference - reduced).abs().max().item()

    fp32_ms = statistics.median(times["fp32"]) * 1e3
    bf16_ms = statistics.median(times["bf16"]) * 1e3
    ratios = [f / b for f, b in zip(times["fp32"], times["bf16"], strict=True)]
    print(
        f"fp32  median {fp32_ms:8.1f} ms per batch ({fp32_ms / args.batch:.1f} ms/image), "
        f"min {min(times['fp32']) * 1e3:.1f}"
    )
    print(
        f"bf16  median {bf16_ms:8.1f} ms per batch ({bf16_ms / args.batch:.1f} ms/image), "
        f"min {min(times['bf16']) * 1e3:.1f}"
    )
    print(
        f"speed-up fp32/bf16: median of paired ratios {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f})"
    )
    # CPU time is less disturbed than wall time by other processes on the machine.
    cpu_ratios = [f / b for f, b in zip(cpu_times["fp32"], cpu_times["bf16"], strict=True)]
    print(
        f"CPU time (all threads) median: fp32 {statistics.median(cpu_times['fp32']) * 1e3:.0f} ms, "
        f"bf16 {statistics.median(cpu_times['bf16']) * 1e3:.0f} ms, "
        f"paired ratio fp32/bf16 {statistics.median(cpu_ratios):.2f}"
    )
    print(
        f"bf16 vs fp32 embedding: cosine {cosine.item():.6f}, max abs diff {max_abs:.4f}, "
        f"fp32 max |x| {reference.abs().max().item():.3f}"
    )
    print("per-run ms fp32:", np.round(np.array(times["fp32"]) * 1e3).astype(int).tolist())
    print("per-run ms bf16:", np.round(np.array(times["bf16"]) * 1e3).astype(int).tolist())


if __name__ == "__main__":
    main()
