"""Benchmark of text prompts on this CPU.

1. The text step: Grounding DINO at the real size of ``IDEA-Research/grounding-dino-tiny`` (Swin-T, BERT-base,
   900 queries; seeded random weights: no download) through the server's ``TransformersGrounder``, on a photo at
   the default upload size (longest side 1024; the processor resizes it to its 800-pixel short side), fp32 and
   under bf16 autocast, interleaved, medians; and how far the bf16 boxes move from the fp32 ones.
2. Find -> masks on screen: Chromium on the real app (seeded random vit_t, the same random detector saved as
   ``SAM_TEXT_MODEL``), from the click on "Find" to the frame after the instances' masks are painted, split into
   the server's detector time and the rest (request, the browser's box decodes, painting).

    .venv/bin/python tests/benchmarks/bench_text.py [--repeats 3] [--phrases "cat, dog"] [--skip-browser]

Not collected by pytest (no test_ prefix). Prints lines of figures and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests"), str(REPO_ROOT / "tests" / "browser")]

from backend_fixtures import WIDE_PHOTO, photo, photo_jpeg, vit_t_checkpoint  # noqa: E402

from backend.text import random_detector  # noqa: E402
from backend.text.detectors import TransformersGrounder  # noqa: E402
from backend.text.grounding import GroundingParameters  # noqa: E402


def upload_sized(pixels: np.ndarray, longest: int = 1024) -> np.ndarray:
    from PIL import Image

    h, w = pixels.shape[:2]
    scale = longest / max(h, w)
    return np.array(Image.fromarray(pixels).resize((round(w * scale), round(h * scale)), Image.BILINEAR))


def text_step(pixels: np.ndarray, phrases: list[str], repeats: int) -> dict:
    model, processor = random_detector.grounding_dino(real_size=True)
    weights = sum(p.numel() for p in model.parameters())
    paths = {
        "fp32": TransformersGrounder(model, processor, model_id="bench", bf16=False),
        "bf16": TransformersGrounder(model, processor, model_id="bench", bf16=True),
    }
    params = GroundingParameters(box_threshold=0.0, max_instances=20)
    times: dict[str, list[float]] = {name: [] for name in paths}
    answers = {}
    for name, grounder in paths.items():  # warm-up (oneDNN kernels, allocator)
        answers[name] = grounder.ground(pixels, phrases, params)
    for _ in range(repeats):
        for name, grounder in paths.items():
            started = time.perf_counter()
            grounder.ground(pixels, phrases, params)
            times[name].append((time.perf_counter() - started) * 1000)
    fp32 = np.array([i.box for i in answers["fp32"]])
    bf16 = np.array([i.box for i in answers["bf16"]])
    # Random weights give near-tied scores, so the two rankings differ: each fp32 box against its nearest bf16 box.
    shift = (
        float(max(np.abs(bf16 - box).max(axis=1).min() for box in fp32)) if len(fp32) and len(bf16) else float("nan")
    )
    result = {
        "weights": weights,
        "image": list(pixels.shape[:2]),
        "fp32_ms": statistics.median(times["fp32"]),
        "bf16_ms": statistics.median(times["bf16"]),
        "bf16_max_box_shift_px": shift,
        "runs": times,
    }
    print(
        f"text step, Grounding DINO tiny size ({weights / 1e6:.0f} M weights, random), image {pixels.shape[1]}x"
        f"{pixels.shape[0]}: fp32 {result['fp32_ms']:.0f} ms, bf16 autocast {result['bf16_ms']:.0f} ms "
        f"(median of {repeats}, interleaved); each fp32 box is within {shift:.1f} px of a bf16 one"
    )
    return result


FIND_TO_PAINT = """async (text) => {
    const started = performance.now();
    document.getElementById('find-text').value = text;
    document.getElementById('find-button').click();
    await new Promise((resolve) => {
        const check = () => (['done', 'error'].includes(document.body.dataset.find) ? resolve() : setTimeout(check, 5));
        check();
    });
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    return { ms: performance.now() - started, state: document.body.dataset.find,
             count: Number(document.body.dataset.findCount) };
}"""


def find_to_paint(phrases: str, repeats: int) -> dict:
    from browser_helpers import CHROMIUM, CHROMIUM_ARGS, LiveServer, open_app, upload
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="bench-text-"))
    try:
        folder = random_detector.save(work / "text-model", "grounding-dino", real_size=True)
        (work / "data").mkdir()
        server = LiveServer(vit_t_checkpoint(), work / "data", {"SAM_TEXT_MODEL": str(folder)})
        image = work / "coffee.jpg"
        shutil.copyfile(photo_jpeg(*WIDE_PHOTO), image)
        runs = []
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.set_default_timeout(600_000)
                open_app(page, server)
                upload(page, image)
                page.click("details.settings summary")
                page.fill("#find-threshold", "0")  # random weights: keep the 20 best, so 20 masks are decoded
                for i in range(repeats + 1):  # the first also loads the model on the server: reported apart
                    # A new phrase each time, so the server's answer cache does not hide the detector.
                    runs.append(page.evaluate(FIND_TO_PAINT, f"{phrases}, thing{i}"))
                browser.close()
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steady = [run["ms"] for run in runs[1:]]
    result = {
        "first_ms": runs[0]["ms"],
        "median_ms": statistics.median(steady),
        "instances": runs[-1]["count"],
        "runs": runs,
    }
    print(
        f"Find -> masks painted (Chromium, WASM decoder, {result['instances']} instances): first {result['first_ms']:.0f} ms "
        f"(loads the detector), then median {result['median_ms']:.0f} ms of {repeats}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--phrases", default="cat, dog")
    parser.add_argument("--skip-browser", action="store_true", help="only the text step")
    parser.add_argument("--skip-text-step", action="store_true", help="only Find -> masks painted")
    args = parser.parse_args()
    pixels = upload_sized(photo(*WIDE_PHOTO))
    phrases = [p.strip() for p in args.phrases.split(",")]
    figures = {} if args.skip_text_step else {"text_step": text_step(pixels, phrases, args.repeats)}
    if not args.skip_browser:
        figures["find_to_paint"] = find_to_paint(args.phrases, args.repeats)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
