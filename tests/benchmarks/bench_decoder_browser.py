"""
Browser benchmark of the ONNX decoders, onnxruntime-web WASM in headless Chromium, cross-origin isolated,
interleaved in one page.

    .venv/bin/python tests/benchmarks/bench_decoder_browser.py [--model reduced|vit_b-random] [--decodes 60]
        [--threads 2] [--image-hw 768 1024] [--decoders official lowres ...] [--baseline official]

--model reduced (default) exports the decoders from the reduced reference model (SAM_REFERENCE_DIR) and feeds
the reference dog embedding; --model vit_b-random builds vit_b with seeded random weights (torch.manual_seed(0))
and feeds a seeded random embedding. Prints each decoder's median time per decode and every decoder's speed-up
over --baseline. A decode is prompt -> binary mask at image size, as the web client needs it: session.run,
then for the official interface a threshold of the chosen full-size mask, for lowres the client's upsampling
(web/js/mask-math.js). The decode's cost is independent of the weights (random or real), only of the graph.
The files compared are the ones the server serves (backend.services.decoders.prepare_decoders).

--sam2 also exports SAM 2.1's decoders (a seeded random sam2.1_hiera_t, torch.manual_seed(0)) and times them as
sam2-<name> on seeded random features, the same image points in SAM 2's stretched frame, the worker's
post-processing (web/js/decoder/sam2-inputs.js); their masks are compared with the first sam2-* decoder's.
"""

import argparse
import http.server
import json
import statistics
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
# tests/ by its folder, not as a package: a wheel may ship a top-level `tests` package that would shadow it.
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT / "tests" / "browser"))

from browser_helpers import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from reference_data import REFERENCE_DIR  # noqa: E402  (SAM_REFERENCE_DIR, else ../shared/reference)

BENCH_DIR = Path(__file__).resolve().parent
ORT_DIST = REPO_ROOT / "web" / "node_modules" / "onnxruntime-web" / "dist"


class IsolatedHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with COOP/COEP, so SharedArrayBuffer and WASM threads are available."""

    routes: dict = {}

    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".wasm": "application/wasm",
        ".onnx": "application/octet-stream",
    }

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0]
        for prefix, directory in self.routes.items():
            if path.startswith(prefix):
                relative = path[len(prefix) :]
                target = (directory / relative).resolve()
                if directory.resolve() in target.parents or target == directory.resolve():
                    return str(target)
        return str(Path("/nonexistent"))

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args) -> None:
        pass


def bench_model(name: str):
    """(Sam, embedding [1, 256, 64, 64] float32, image (H, W)) for --model."""
    import torch

    from backend.sam import build_sam, sam_model_registry

    if name == "vit_b-random":
        torch.manual_seed(0)
        embedding = np.random.default_rng(0).standard_normal((1, 256, 64, 64)).astype(np.float32)
        return sam_model_registry["vit_b"]().eval(), embedding, [768, 1024]
    meta = json.loads((REFERENCE_DIR / "reduced_vit_seed0_dog.json").read_text())
    model = build_sam(checkpoint=str(REFERENCE_DIR / meta["checkpoint"]), **meta["config"]).eval()
    embedding = np.load(REFERENCE_DIR / meta["arrays"])["embedding"].astype(np.float32)
    return model, embedding, meta["image_hw"]


def sam2_bench_inputs(tmp: Path, image_hw) -> tuple[Path, bytes]:
    """(directory of SAM 2.1's served decoders, its three seeded random feature tensors as float32 bytes)."""
    import torch

    from backend.sam2 import build_sam2
    from backend.services.decoders import prepare_decoders

    torch.manual_seed(0)
    model = build_sam2("sam2.1_hiera_t")
    models_dir = prepare_decoders(model, "bench-sam2.1-random", tmp / "cache-sam2")[0]["path"].parent
    rng = np.random.default_rng(0)
    shapes = [(256, 64, 64), (32, 256, 256), (64, 128, 128)]
    return models_dir, b"".join(rng.standard_normal(shape).astype(np.float32).tobytes() for shape in shapes)


def with_sam2_coords(prompts: list, image_hw) -> list:
    """Each prompt with sam2Coords: its points (in SAM 1's resized frame) in SAM 2's stretched 1024 x 1024 one."""
    h, w = image_hw
    scale = 1024 / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    for prompt in prompts:
        prompt["sam2Coords"] = [[x * 1024 / new_w, y * 1024 / new_h] for x, y in prompt["coords"]]
    return prompts


def bench_prompts(image_hw) -> list:
    """Clicks, a box and box + point in the 1024 frame (as the client sends them)."""
    h, w = image_hw
    scale = 1024 / max(h, w)
    sx, sy = int(w * scale + 0.5) / w, int(h * scale + 0.5) / h
    prompts = []
    for fx, fy in [(0.5, 0.5), (0.25, 0.3), (0.7, 0.6), (0.4, 0.8), (0.85, 0.2)]:
        prompts.append({"coords": [[fx * w * sx, fy * h * sy], [0, 0]], "labels": [1, -1], "multimask": True})
    prompts.append(
        {"coords": [[0.1 * w * sx, 0.2 * h * sy], [0.8 * w * sx, 0.9 * h * sy]], "labels": [2, 3], "multimask": False}
    )
    prompts.append(
        {
            "coords": [[0.5 * w * sx, 0.5 * h * sy], [0.2 * w * sx, 0.2 * h * sy], [0.9 * w * sx, 0.9 * h * sy]],
            "labels": [1, 2, 3],
            "multimask": False,
        }
    )
    return prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decodes", type=int, default=60, help="timed decodes per decoder (>= 40)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models-dir", type=Path, help="use official.onnx, lowres.onnx (and *-quantized.onnx) here")
    parser.add_argument(
        "--image-hw",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="image size the masks are made for (default: the reference dog, 534 x 800)",
    )
    parser.add_argument("--model", choices=("reduced", "vit_b-random"), default="reduced")
    parser.add_argument(
        "--decoders",
        nargs="+",
        default=["official", "lowres"],
        help="decoder names to time (default: official lowres; the first is the masks' reference)",
    )
    parser.add_argument("--baseline", default=None, help="speed-ups are over this decoder (default: the first)")
    parser.add_argument("--with-quantized", action="store_true", help="also time the two quantized decoders")
    parser.add_argument(
        "--ort-dist",
        type=Path,
        default=ORT_DIST,
        help="onnxruntime-web dist directory (default: the pinned one in web/node_modules)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="also time, for each lowres decoder, 1 box and this many boxes in one run (interleaved)",
    )
    parser.add_argument(
        "--sam2",
        nargs="*",
        metavar="DECODER",
        help="also time SAM 2.1's decoders of these names as sam2-<name> (default with no names: lowres-quantized)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw result here")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="onnxruntime-web's profiler on: print each decoder's time per operator type (it slows the runs)",
    )
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        parser.error(f"Chromium not found at {CHROMIUM} (Debian: apt-get install chromium)")

    model, embedding, model_hw = bench_model(args.model)
    with tempfile.TemporaryDirectory(prefix="bench-decoder-") as tmp:
        tmp = Path(tmp)
        models_dir = args.models_dir
        if models_dir is None:
            from backend.services.decoders import prepare_decoders

            models_dir = prepare_decoders(model, f"bench-{args.model}", tmp / "cache")[0]["path"].parent
        names = list(args.decoders)
        if args.with_quantized:
            names += [n for n in ("official-quantized", "lowres-quantized") if n not in names]
        sizes = {name: (models_dir / f"{name}.onnx").stat().st_size for name in names}
        image_hw = list(args.image_hw) if args.image_hw else list(model_hw)
        data_dir = tmp / "data"
        data_dir.mkdir()
        (data_dir / "embedding.f32").write_bytes(embedding.tobytes())
        sam2_names = [f"sam2-{name}" for name in (args.sam2 or ["lowres-quantized"])] if args.sam2 is not None else []
        if sam2_names:
            sam2_dir, features = sam2_bench_inputs(tmp, image_hw)
            (data_dir / "sam2_features.f32").write_bytes(features)
            for name in sam2_names:
                (data_dir / f"{name}.onnx").write_bytes((sam2_dir / f"{name[5:]}.onnx").read_bytes())
                sizes[name] = (data_dir / f"{name}.onnx").stat().st_size
        params = {
            "threads": args.threads,
            "decodes": args.decodes,
            "warmup": args.warmup,
            "image_hw": image_hw,
            "models": {name: f"/models/{name}.onnx" for name in names} | {n: f"/bench/{n}.onnx" for n in sam2_names},
            "sam2": bool(sam2_names),
            "interfaces": {name: "official" if "official" in name else "lowres" for name in names},
            "prompts": with_sam2_coords(bench_prompts(image_hw), image_hw),
            "profile": args.profile,
            "batch": args.batch,
        }
        params["interfaces"].update({n: "sam2-official" if "official" in n else "sam2-lowres" for n in sam2_names})
        names += sam2_names
        (data_dir / "params.json").write_text(json.dumps(params))
        for name in ("decoder_bench.html", "decoder_bench.js"):
            (data_dir / name).write_bytes((BENCH_DIR / name).read_bytes())

        IsolatedHandler.routes = {
            "/bench/": data_dir,
            "/models/": models_dir,
            "/ort/": args.ort_dist,
            "/web/js/": REPO_ROOT / "web" / "js",
        }
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), IsolatedHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/bench/decoder_bench.html"
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page()
                console: list[str] = []
                page.on("console", lambda message: console.append(message.text))
                page.goto(url)
                page.wait_for_function("window.benchResult || window.benchError", timeout=900_000, polling=500)
                error = page.evaluate("window.benchError")
                if error:
                    raise RuntimeError(f"benchmark page failed: {error}")
                result = page.evaluate("window.benchResult")
                browser.close()
        finally:
            server.shutdown()

    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(
        f"onnxruntime-web {result['ortVersion']}, crossOriginIsolated={result['crossOriginIsolated']}, "
        f"threads={result['threads']}, {args.decodes} interleaved decodes each, image {image_hw}"
    )
    print("session load ms: " + ", ".join(f"{k} {v:.0f}" for k, v in result["loadMs"].items()))
    # The first run on the image (exporter 7's lowres graphs also compute the image projections the later ones reuse).
    print("first run on the image ms: " + ", ".join(f"{k} {v:.0f}" for k, v in result["firstRunMs"].items()))
    baseline = args.baseline or names[0]
    medians = {}
    for name, series in result["times"].items():
        medians[name] = {key: statistics.median(values) for key, values in series.items()}
        # The client's work after the run (threshold or upsampling), per decode: the difference of the two
        # medians above mixes two noisy series.
        medians[name]["afterMs"] = statistics.median(
            t - r for t, r in zip(series["totalMs"], series["runMs"], strict=True)
        )
    for name in names:
        m, b = medians[name], medians[baseline]
        print(
            f"{name:18s} {sizes[name]:>11,} B   median run {m['runMs']:7.1f} ms   prompt->mask {m['totalMs']:7.1f} ms"
            f" (after the run {m['afterMs']:.1f})   speed-up over {baseline}: run {b['runMs'] / m['runMs']:.2f}x,"
            f" prompt->mask {b['totalMs'] / m['totalMs']:.2f}x"
        )
    for name in names:
        if f"{name} 1 box" not in medians:
            continue
        one, many = medians[f"{name} 1 box"], medians[f"{name} {args.batch} boxes"]
        print(
            f"{name}: 1 box {one['totalMs']:.1f} ms, {args.batch} boxes in one run {many['totalMs']:.1f} ms "
            f"(prompt->masks; run {one['runMs']:.1f} / {many['runMs']:.1f} ms): "
            f"{many['totalMs'] / one['totalMs']:.2f}x one box"
        )
    for name in names[1:]:
        ious = [a["iou"] for a in result["agreement"] if a["decoder"] == name]
        first = next(n for n in names if n.startswith("sam2-") == name.startswith("sam2-"))
        if ious:
            print(f"mask IoU of {name} vs {first}, worst of {len(ious)} prompts: {min(ious):.5f}")
    if args.profile:
        print_profile(console)
    return 0


def print_profile(console: list[str]) -> None:
    """Per operator type, the share of kernel time in the profiler's events (the WASM build prints them, one
    JSON object per console line, for each session in turn; a session's events start with its model load)."""
    sessions: list[dict] = []
    for line in console:
        try:
            event = json.loads(line.strip().rstrip(","))
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("name") == "model_loading_array" or not sessions:
            sessions.append({})
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            sessions[-1][op] = sessions[-1].get(op, 0) + event.get("dur", 0)
            node = "node " + event["name"].removesuffix("_kernel_time")
            sessions[-1][node] = sessions[-1].get(node, 0) + event.get("dur", 0)
    for index, entries in enumerate(sessions):
        ops = {k: v for k, v in entries.items() if not k.startswith("node ")}
        nodes = {k[5:]: v for k, v in entries.items() if k.startswith("node ")}
        total = sum(ops.values()) or 1
        top = sorted(ops.items(), key=lambda item: -item[1])[:12]
        print(f"profile, session {index}: " + ", ".join(f"{op} {100 * dur / total:.1f}%" for op, dur in top))
        top = sorted(nodes.items(), key=lambda item: -item[1])[:25]
        print("  nodes: " + ", ".join(f"{node} {100 * dur / total:.1f}%" for node, dur in top))


if __name__ == "__main__":
    raise SystemExit(main())
