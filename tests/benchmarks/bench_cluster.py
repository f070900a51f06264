"""Benchmark past one machine: batch AMG images/min locally vs on Ray Data (and, with --encoder, Serve replicas).

AMG: the same folder of images (scikit-image photos, downscaled) labelled by `backend.cluster.batch_amg.run` with the
seeded random vit_t (the real MobileSAM architecture), permissive thresholds so masks survive, in three
configurations, interleaved, each repeated --repeats times into fresh output folders; the median per
configuration:

- local, one model with --local-threads torch threads (default: all cores);
- Ray Data, --ray-workers actors of one thread each (the cluster: a local `ray start --head` on loopback);
- Ray Data, one actor with --local-threads threads (same thread count as local: byte-identical outputs).

Ray's figures include the actors' start (model load) but not the cluster's.

Encoder (--encoder): images/s of the Serve encoder deployment (backend/cluster/serve_encoder.py, the vit_t above)
with 1 and 2 replicas of one thread each, alternating (the deployment is rescaled in place), a burst of
--burst concurrent requests each time, after one warm-up round; the ratio 2/1 is the figure.

    .venv/bin/python tests/benchmarks/bench_cluster.py [--images 4] [--points-per-side 8] [--repeats 2]
        [--ray-workers 2] [--local-threads N] [--encoder] [--burst 8]

Not collected by pytest (no test_ prefix). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from cluster_fixtures import RAY_ENV, started_ray_head, vit_t_checkpoint, write_images  # noqa: E402

from backend.cluster import batch_amg  # noqa: E402
from backend.sam import sam_model_registry  # noqa: E402

PERMISSIVE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.6, stability_score_offset=0.01, box_nms_thresh=0.7)


def amg_run(folder: Path, build, settings: dict, *, threads: int, ray_address=None, workers=None) -> float:
    """Seconds to label every image of folder/images into a fresh output folder."""
    output = Path(tempfile.mkdtemp(dir=folder, prefix="out-"))
    started = time.perf_counter()
    counts = batch_amg.run(
        folder / "images",
        output,
        build,
        model_id={"model": "vit_t-random"},
        amg_kwargs=settings,
        output_mode="coco_rle",
        threads=threads,
        ray_address=ray_address,
        ray_workers=workers,
    )
    elapsed = time.perf_counter() - started
    assert counts["failed"] == 0 and counts["labelled"] > 0, counts
    shutil.rmtree(output)
    return elapsed


def encoder_replica_ratio(address: str, checkpoint: Path, burst: int, repeats: int) -> dict:
    """Images/s of the Serve encoder with 1 and 2 replicas (1 thread each), alternating, a burst each time."""
    import numpy as np
    from ray import serve

    from backend.cluster import serve_encoder
    from backend.config import Config

    config = Config.from_env(
        overrides={"model_type": "vit_t", "checkpoint": str(checkpoint), "allow_download": False, "device": "cpu"}
    )
    settings = serve_encoder.replica_settings(config)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8) for _ in range(burst)]
    rates: dict[int, list[float]] = {1: [], 2: []}
    handle = None
    for round_index in range(repeats + 1):  # the first round warms both configurations up
        for replicas in (1, 2):
            serve_encoder.deploy(address, serve_encoder.build_app(settings, replicas=replicas, threads=1))
            handle = serve.get_deployment_handle(serve_encoder.DEPLOYMENT_NAME, app_name=serve_encoder.APP_NAME)
            _wait_for_replicas(replicas)
            started = time.perf_counter()
            responses = [handle.remote(image) for image in images]
            for response in responses:
                response.result(timeout_s=600)
            if round_index > 0:
                rates[replicas].append(burst / (time.perf_counter() - started))
    serve.delete(serve_encoder.APP_NAME)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"encoder (vit_t, 1 thread per replica, bursts of {burst} images 1024x768)")
    print(f"  1 replica   {one:6.2f} images/s  (runs: {', '.join(f'{v:.2f}' for v in rates[1])})")
    print(f"  2 replicas  {two:6.2f} images/s  (runs: {', '.join(f'{v:.2f}' for v in rates[2])})")
    print(f"  ratio 2/1   {two / one:6.2f}")
    return {"images_per_s_1": round(one, 3), "images_per_s_2": round(two, 3), "ratio": round(two / one, 3)}


def _wait_for_replicas(count: int, timeout_s: float = 300) -> None:
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
        running = [n for n in names if n.startswith("SERVE_REPLICA") and "SamEncoder" in n]
        if len(running) == count:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the deployment did not reach {count} replicas")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--local-threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--encoder", action="store_true", help="also measure 1 vs 2 Serve encoder replicas")
    parser.add_argument("--no-amg", action="store_true", help="skip the batch AMG part")
    parser.add_argument("--burst", type=int, default=8)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    os.environ.update(RAY_ENV)
    head = started_ray_head(num_cpus=os.cpu_count() or 2)
    try:
        write_images(folder / "images", args.images)
        checkpoint = vit_t_checkpoint(folder)
        build = functools.partial(sam_model_registry["vit_t"], checkpoint=str(checkpoint))
        settings = dict(points_per_side=args.points_per_side, **PERMISSIVE)
        configs = {
            f"local ({args.local_threads} threads)": dict(threads=args.local_threads),
            f"ray ({args.ray_workers} actors x 1 thread)": dict(
                threads=1, ray_address=head.address, workers=args.ray_workers
            ),
            f"ray (1 actor x {args.local_threads} threads)": dict(
                threads=args.local_threads, ray_address=head.address, workers=1
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in configs}
        for _ in range(0 if args.no_amg else args.repeats):
            for name, kwargs in configs.items():
                times[name].append(amg_run(folder, build, settings, **kwargs))
        result = {"images": args.images, "points_per_side": args.points_per_side, "amg_images_per_min": {}}
        print(f"batch AMG, {args.images} images, {args.points_per_side}x{args.points_per_side} grid, vit_t")
        for name, values in times.items():
            if not values:
                continue
            per_min = 60 * args.images / statistics.median(values)
            result["amg_images_per_min"][name] = round(per_min, 2)
            print(f"  {name:32s} {per_min:6.2f} images/min  (runs: {', '.join(f'{v:.1f} s' for v in values)})")
        if args.encoder:
            result["encoder"] = encoder_replica_ratio(head.address, checkpoint, args.burst, args.repeats)
        print(json.dumps(result))
    finally:
        head.stop()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
