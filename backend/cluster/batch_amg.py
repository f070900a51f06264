"""Batch labelling: everything mode over an image or a folder (Meta's scripts/amg.py outputs), locally or on Ray Data.

    python -m backend amg --checkpoint C --model-type T --input IMAGE_OR_DIR --output DIR
        [--convert-to-rle] [AMG settings as in scripts/amg.py] [--device D] [--ray-address ADDR|local]

Per image ``NAME.ext`` the output is either a folder ``DIR/NAME/`` with one PNG per mask (``0.png`` ...,
8-bit, 255 inside) and ``metadata.csv`` (the columns of scripts/amg.py), or with ``--convert-to-rle`` one
``DIR/NAME.json`` in the SA-1B layout ``{"image": {...}, "annotations": [...]}`` with COCO RLE masks.

Resumable: an image whose output exists is skipped. Every output is written under a hidden temporary name
and renamed into place, so a killed run leaves finished outputs and no half-written one; the settings are
kept in ``DIR/.amg-settings.json`` and a run with other settings is refused rather than mixed in.

With ``--ray-address`` the images are labelled by Ray Data actors (``map_batches``, one model per actor, a
GPU each when the cluster has GPUs); the actors read the inputs (a path every node sees: shared storage)
and send the encoded files back, which this process writes exactly as a local run does, so the outputs are
byte-identical.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import functools
import io
import json
import os
import pickle
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

SETTINGS_FILE = ".amg-settings.json"
LOCK_FILE = ".amg.lock"
PARTIAL_MARK = ".partial-"
METADATA_HEADER = (
    "id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,stability_score,"
    "crop_box_x0,crop_box_y0,crop_box_w,crop_box_h"
)

# (flag, type, help): the generator settings of scripts/amg.py; unset ones keep the generator's defaults.
AMG_SETTINGS: tuple[tuple[str, type, str], ...] = (
    ("points_per_side", int, "prompt grid: this many points along each side of the image (default 32)"),
    ("points_per_batch", int, "point prompts decoded together (default 64)"),
    ("pred_iou_thresh", float, "drop masks whose predicted IoU is below this (default 0.88)"),
    ("stability_score_thresh", float, "drop masks whose stability score is below this (default 0.95)"),
    ("stability_score_offset", float, "logit offset used to measure stability (default 1.0)"),
    ("box_nms_thresh", float, "box IoU above which a duplicate mask is dropped (default 0.7)"),
    ("crop_n_layers", int, "if > 0, also run on 2^i x 2^i overlapping crops for i = 1..N (default 0)"),
    ("crop_nms_thresh", float, "box IoU above which a duplicate across crops is dropped (default 0.7)"),
    ("crop_overlap_ratio", float, "fraction of the crop size by which crops overlap (default 512/1500)"),
    ("crop_n_points_downscale_factor", int, "points per side shrink by this factor in each crop layer (default 1)"),
    ("min_mask_region_area", int, "fill holes and drop islands smaller than this many pixels (default 0: off)"),
)


class BatchError(RuntimeError):
    """A batch run that cannot start or go on; the message says why (the CLI prints it, exit code 2)."""


@dataclasses.dataclass(frozen=True)
class Target:
    """One input image: its path, its output name (the file name without extension) and its image id."""

    path: str
    name: str
    image_id: int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of scripts/amg.py, plus --ray-address, --ray-workers and --no-wait."""
    parser.add_argument("--input", required=True, help="an image, or a folder whose images are all labelled")
    parser.add_argument("--output", required=True, help="folder for the outputs: one mask folder (or JSON) per image")
    parser.add_argument("--model-type", required=True, help="vit_h (= default), vit_l, vit_b or vit_t")
    parser.add_argument("--checkpoint", required=True, help="the SAM checkpoint of that model type")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when present, else CPU)")
    parser.add_argument(
        "--convert-to-rle",
        action="store_true",
        help="write one JSON per image (SA-1B layout, COCO RLE masks) instead of a folder of PNGs",
    )
    settings = parser.add_argument_group("AMG settings")
    for name, kind, text in AMG_SETTINGS:
        settings.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per model (default: torch's, i.e. this machine's cores; on Ray at most the CPUs one "
        "node has free); outputs are byte-identical between runs with the same value",
    )
    from .ray_pool import add_cluster_arguments

    add_cluster_arguments(
        parser.add_argument_group("Ray"),
        workers_help="at most this many model actors (default: as many as the cluster can hold, one GPU each "
        "when it has GPUs, else --threads CPUs each); the run starts with those that fit in what is free",
    )


def main(args: argparse.Namespace, stream: IO[str] | None = None) -> int:
    """Runs the `amg` subcommand; returns the exit code."""
    return run_command(_run_from_args, args, stream)


def _run_from_args(args: argparse.Namespace, stream: IO[str]) -> None:
    amg_kwargs = {name: getattr(args, name) for name, _, _ in AMG_SETTINGS if getattr(args, name) is not None}
    output_mode = "coco_rle" if args.convert_to_rle else "binary_mask"
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise BatchError(f"checkpoint {args.checkpoint} is not a file")
    from ..sam import sam_model_registry

    sam_model_registry[args.model_type]  # An unknown type fails here, before any image is read.
    stat = checkpoint.stat()
    run(
        args.input,
        args.output,
        functools.partial(_load_checkpoint, args.model_type, str(checkpoint.resolve())),
        model_id={"model_type": args.model_type, "checkpoint": checkpoint.name, "bytes": stat.st_size},
        amg_kwargs=amg_kwargs,
        output_mode=output_mode,
        **run_options(args, stream),
    )


def run_options(args: argparse.Namespace, stream: IO[str]) -> dict[str, Any]:
    """The keyword arguments every batch command's ``run`` takes from the shared flags (device, threads, Ray)."""
    return dict(
        device=args.device,
        threads=args.threads,
        ray_address=args.ray_address,
        ray_workers=args.ray_workers,
        wait=not args.no_wait,
        stream=stream,
    )


def run_command(
    start: Callable[[argparse.Namespace, IO[str]], object],
    args: argparse.Namespace,
    stream: IO[str] | None,
    *,
    usage_errors: tuple[type[Exception], ...] = (),
) -> int:
    """Runs a batch subcommand (``start(args, stream)``) and gives its exit code, the same for every batch command:
    0 when it finished; ray_pool.EXIT_CLUSTER_FULL when ``--no-wait`` found no room on the cluster; 2 when it
    could not start or go on (a BatchError, a bad checkpoint or value, or one of the command's ``usage_errors``).
    The reason goes to ``stream`` (default: stderr) as ``error: ...``."""
    stream = sys.stderr if stream is None else stream
    from ..sam.build import CheckpointError
    from .ray_pool import EXIT_CLUSTER_FULL, ClusterFull

    try:
        start(args, stream)
    except ClusterFull as error:
        print(f"error: {error}; not waiting (--no-wait)", file=stream)
        return EXIT_CLUSTER_FULL
    except (BatchError, CheckpointError, ValueError, *usage_errors) as error:
        print(f"error: {error}", file=stream)
        return 2
    return 0


def run(
    input_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    build_model: Callable[[], Any],
    *,
    model_id: dict[str, Any],
    amg_kwargs: dict[str, Any],
    output_mode: str = "binary_mask",
    device: str | None = None,
    threads: int | None = None,
    ray_address: str | None = None,
    ray_workers: int | None = None,
    wait: bool = True,
    stream: IO[str] | None = None,
) -> dict[str, int]:
    """Labels every image of ``input_path`` not yet done in ``output_dir``.

    build_model: a picklable callable returning the Sam (on the CPU; it is moved to ``device``). model_id:
    what identifies the weights in the settings file. amg_kwargs: SamAutomaticMaskGenerator arguments.
    output_mode: "binary_mask" (PNG folders) or "coco_rle" (SA-1B JSON). Returns counts: labelled,
    skipped (already done), failed (unreadable images, reported on ``stream`` and retried by the next run).

    threads: torch CPU threads per model, the same locally and in every Ray actor (default: this process's
    torch.get_num_threads(), on Ray capped at the CPUs one node has free, so a shared cluster can start):
    float sums are split across threads, so only equal thread counts give byte-identical outputs on CPU.

    ray_address / ray_workers / wait: see ``label_on_ray``; with ``wait`` False a cluster without room for
    one model actor raises ray_pool.ClusterFull instead of waiting.
    """
    check_threads(threads)
    if output_mode not in ("binary_mask", "coco_rle"):
        raise ValueError(f"output_mode must be binary_mask or coco_rle, got {output_mode!r}")
    _make_generator(None, amg_kwargs, output_mode)  # Bad settings fail before any model is loaded.
    targets = find_targets(input_path)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    return run_batch(
        targets,
        Labeller,
        dict(build_model=build_model, amg_kwargs=amg_kwargs, output_mode=output_mode, device=device),
        output=output,
        parts=output,
        output_mode=output_mode,
        settings={"model": model_id, "amg": amg_kwargs, "output_mode": output_mode},
        threads=threads,
        ray_address=ray_address,
        ray_workers=ray_workers,
        wait=wait,
        stream=stream,
    )


def check_threads(threads: int | None) -> None:
    """Refuses a thread count below one before anything is read or written."""
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")


def run_batch(
    targets: list[Target],
    labeller_class: type[BatchLabeller],
    labeller_kwargs: dict[str, Any],
    *,
    output: Path,
    parts: Path,
    output_mode: str,
    settings: dict[str, Any],
    threads: int | None,
    ray_address: str | None,
    ray_workers: int | None,
    wait: bool,
    stream: IO[str] | None,
    before_summary: Callable[[], object] | None = None,
) -> dict[str, int]:
    """The run every batch command shares (``amg``'s ``run``, text ``label``'s), so that resuming, the lock,
    the progress and the counts behave alike: under ``output``'s lock, refuses other ``settings``, clears what a
    killed run left in ``parts`` (the folder of the per-image outputs), labels the targets without an output
    there with ``labeller_class(**labeller_kwargs, threads=threads)``, here or on Ray (``label_on_ray``), and
    writes each image's files as its result arrives. ``before_summary`` (a command's own last file) runs after
    the last image, before the counts are said. Returns counts: labelled, skipped (already done), failed
    (unreadable images, reported on ``stream`` and retried by the next run)."""
    with _exclusive(output):
        _check_settings(output, settings)
        _remove_partials(parts)
        todo = [t for t in targets if not output_path(parts, t, output_mode).exists()]
        progress = Progress(len(targets), len(targets) - len(todo), stream)
        counts = {"labelled": 0, "skipped": len(targets) - len(todo), "failed": 0}
        if ray_address is None:
            import torch

            threads = int(threads) if threads is not None else torch.get_num_threads()
            results = _label_locally(todo, labeller_class, labeller_kwargs, threads)
        else:
            results = label_on_ray(
                todo,
                labeller_class,
                labeller_kwargs,
                threads=threads,
                address=ray_address,
                workers=ray_workers,
                wait=wait,
                progress=progress,
            )
        for target, result in results:
            if "error" in result:
                counts["failed"] += 1
                progress.note(f"skipped {target.path}: {result['error']}")
            else:
                write_outputs(parts, target, output_mode, result["files"])
                counts["labelled"] += 1
            progress.advance(target.name, result.get("masks"))
        if before_summary is not None:
            before_summary()
        progress.close(counts)
    return counts


def find_targets(input_path: str | os.PathLike[str]) -> list[Target]:
    """The image, or the files of the folder (not its subfolders), sorted by name; image_id is the position."""
    path = Path(input_path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        files = [path]
    else:
        raise BatchError(f"input {input_path} is neither an image file nor a folder")
    targets = [Target(path=str(p), name=p.stem, image_id=i) for i, p in enumerate(files)]
    seen: dict[str, str] = {}
    for target in targets:
        if target.name in seen:
            raise BatchError(f"{seen[target.name]} and {target.path} would both be written as {target.name!r}")
        seen[target.name] = target.path
    return targets


def output_path(output: Path, target: Target, output_mode: str) -> Path:
    return output / (target.name + ".json" if output_mode == "coco_rle" else target.name)


def label_image(generator: Any, target: Target, output_mode: str) -> dict[str, Any]:
    """Runs the generator on one image: ``{"files": {relative name: bytes}, "masks": n}`` or ``{"error": text}``."""
    from ..services.images import ImageError, decode_image

    try:
        data = Path(target.path).read_bytes()
        image = decode_image(data).pixels
    except (OSError, ImageError) as error:
        return {"error": str(error)}
    masks = generator.generate(image)
    if output_mode == "coco_rle":
        files = {"": sa1b_json(masks, target, image.shape[:2])}
    else:
        files = mask_folder(masks)
    return {"files": files, "masks": len(masks)}


def mask_folder(masks: list[dict[str, Any]]) -> dict[str, bytes]:
    """``{i}.png`` (0/255 grayscale) per mask and ``metadata.csv``, as scripts/amg.py writes them."""
    from PIL import Image

    files: dict[str, bytes] = {}
    rows = [METADATA_HEADER]
    for i, mask in enumerate(masks):
        png = io.BytesIO()
        Image.fromarray(mask["segmentation"].astype(np.uint8) * 255, mode="L").save(png, format="PNG")
        files[f"{i}.png"] = png.getvalue()
        values = [i, mask["area"], *mask["bbox"], *mask["point_coords"][0], mask["predicted_iou"]]
        values += [mask["stability_score"], *mask["crop_box"]]
        rows.append(",".join(str(v) for v in values))
    files["metadata.csv"] = "\n".join(rows).encode()
    return files


def sa1b_json(masks: list[dict[str, Any]], target: Target, size: tuple[int, int]) -> bytes:
    """One image's annotations in the SA-1B layout, masks as COCO RLE (compressed counts strings)."""
    height, width = size
    image = {
        "image_id": target.image_id,
        "width": int(width),
        "height": int(height),
        "file_name": Path(target.path).name,
    }
    annotations = [
        {
            "id": i,
            "segmentation": mask["segmentation"],
            "area": mask["area"],
            "bbox": mask["bbox"],
            "predicted_iou": mask["predicted_iou"],
            "point_coords": mask["point_coords"],
            "stability_score": mask["stability_score"],
            "crop_box": mask["crop_box"],
        }
        for i, mask in enumerate(masks)
    ]
    return json.dumps({"image": image, "annotations": annotations}).encode()


def write_outputs(output: Path, target: Target, output_mode: str, files: dict[str, bytes]) -> None:
    """Writes one image's files under a temporary name, then renames them into place (atomic on one filesystem)."""
    final = output_path(output, target, output_mode)
    partial = output / f".{target.name}{PARTIAL_MARK}{uuid.uuid4().hex}"
    if output_mode == "coco_rle":
        _write_file(partial, files[""])
        os.replace(partial, final)
        return
    partial.mkdir()
    for name, data in files.items():
        _write_file(partial / name, data)
    try:
        os.rename(partial, final)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not final.is_dir():
            raise


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _make_generator(model: Any, amg_kwargs: dict[str, Any], output_mode: str) -> Any:
    from ..sam import SamAutomaticMaskGenerator

    if model is None:  # Only checks the settings: the generator keeps the model but never touches it here.
        model = _SettingsProbe()
    return SamAutomaticMaskGenerator(model, output_mode=output_mode, **amg_kwargs)


class _SettingsProbe:
    """Stands in for a Sam while the generator's settings are validated (only image_size is read)."""

    image_size = 1024


def _load_checkpoint(model_type: str, checkpoint: str) -> Any:
    from ..sam import sam_model_registry

    return sam_model_registry[model_type](checkpoint=checkpoint)


def _device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class BatchLabeller:
    """A batch command's model(s), labelling one image at a time: ``label`` here, ``__call__`` as a Ray Data actor.

    A subclass takes its settings and ``threads`` as keyword arguments and gives ``label(target)``:
    ``{"files": {relative name: bytes}, "masks": n}`` (what ``write_outputs`` writes) or ``{"error": text}``."""

    def label(self, target: Target) -> dict[str, Any]:
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A Ray Data batch of targets -> the same rows with a pickled result each."""
        results = []
        for path, name, image_id in zip(batch["path"], batch["name"], batch["image_id"], strict=True):
            target = Target(path=str(path), name=str(name), image_id=int(image_id))
            results.append(pickle.dumps(self.label(target)))
        return {"image_id": np.asarray(batch["image_id"]), "result": np.array(results, dtype=object)}


class Labeller(BatchLabeller):
    """One model and generator: ``amg``'s labeller."""

    def __init__(
        self,
        build_model: Callable[[], Any],
        amg_kwargs: dict[str, Any],
        output_mode: str,
        device: str | None,
        threads: int,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        model = build_model().to(_device(device)).eval()
        self.generator = _make_generator(model, amg_kwargs, output_mode)
        self.output_mode = output_mode

    def label(self, target: Target) -> dict[str, Any]:
        return label_image(self.generator, target, self.output_mode)


def _label_locally(
    todo: list[Target],
    labeller_class: type[BatchLabeller],
    labeller_kwargs: dict[str, Any],
    threads: int,
) -> Iterator[tuple[Target, dict[str, Any]]]:
    if not todo:
        return
    import torch

    previous = torch.get_num_threads()
    try:
        labeller = labeller_class(**labeller_kwargs, threads=threads)
        for target in todo:
            yield target, labeller.label(target)
    finally:
        torch.set_num_threads(previous)


def label_on_ray(
    todo: list[Target],
    actor_class: type,
    actor_kwargs: dict[str, Any],
    *,
    threads: int | None,
    address: str,
    workers: int | None,
    wait: bool,
    progress: Progress,
) -> Iterator[tuple[Target, dict[str, Any]]]:
    """Labels ``todo`` on an autoscaling pool of ``actor_class(**actor_kwargs, threads=threads)`` actors
    (ray_pool.map_on_ray), the one Ray path of every batch command (``amg``'s ``Labeller``, text ``label``'s
    ``TextLabeller``: BatchLabeller actors, mapping a batch of Target rows to rows of ``image_id`` and a pickled
    result).

    Each actor asks for ``threads`` CPUs (default: ray_pool.threads_per_actor, said on ``progress``) plus one GPU
    when the cluster has GPUs; the pool starts with what is free and grows up to ``workers``. When not one actor
    fits, ``progress.waiting`` says why, or ray_pool.ClusterFull is raised if not ``wait``. ``address``: the
    cluster (``local`` starts one here), unless this process is already connected to one.
    """
    if not todo:
        return
    import torch

    try:
        import ray

        from .ray_pool import ResourceRequest, cluster_has_gpus, map_on_ray, threads_per_actor
    except ImportError:
        raise BatchError("--ray-address needs Ray: pip install '.[cluster]'") from None

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=None if address == "local" else address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        if threads is None:
            threads = threads_per_actor(torch.get_num_threads())
            progress.note(f"{threads} CPU thread(s) per model actor (--threads sets it)")
        request = ResourceRequest(cpus=threads, gpus=1 if cluster_has_gpus() else 0)
        by_id = {t.image_id: t for t in todo}
        rows = [dataclasses.asdict(t) for t in todo]
        kwargs = {**actor_kwargs, "threads": threads}
        for row in map_on_ray(
            rows, actor_class, kwargs, request=request, workers=workers, wait=wait, on_waiting=progress.waiting
        ):
            yield by_id[int(row["image_id"])], pickle.loads(row["result"])
    finally:
        if started_here:
            ray.shutdown()


class Progress:
    """A progress bar over images: redrawn in place on a terminal, a line per image elsewhere (logs)."""

    def __init__(self, total: int, done: int, stream: IO[str] | None) -> None:
        self.total, self.done, self.stream = total, done, stream
        self.started = time.monotonic()
        self.is_tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.labelled = 0
        self.bar_open = False  # A terminal's bar line awaits its newline before the next note.
        self.note(f"{total} images: {done} already done, {total - done} to label")

    def note(self, text: str) -> None:
        if self.stream is not None:
            self.stream.write(("\n" if self.bar_open else "") + text + "\n")
            self.stream.flush()
            self.bar_open = False

    def waiting(self, reason: str) -> None:
        """Nothing can run yet: the reason, then the bar where it stands (no image labelled by this run)."""
        self.note(f"waiting for the cluster: {reason}")
        self._draw("waiting for room on the cluster")

    def advance(self, name: str, masks: int | None) -> None:
        self.done += 1
        self.labelled += 1
        self._draw(f"{name}: {'-' if masks is None else masks} masks")

    def _draw(self, tail: str) -> None:
        if self.stream is None:
            return
        elapsed = time.monotonic() - self.started
        rate = self.labelled / max(elapsed, 1e-9)
        eta = f"ETA {(self.total - self.done) / rate:.0f} s" if rate else "ETA -"
        fraction = self.done / max(self.total, 1)
        filled = int(30 * fraction)
        line = (
            f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {60 * rate:.1f} images/min {eta}  {tail}"
        )
        self.stream.write("\r" + line if self.is_tty else line + "\n")
        self.stream.flush()
        self.bar_open = self.is_tty

    def close(self, counts: dict[str, int]) -> None:
        self.note("done: " + ", ".join(f"{value} {key}" for key, value in counts.items()))


@contextlib.contextmanager
def _exclusive(output: Path) -> Iterator[None]:
    with open(output / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchError(f"another amg run is writing to {output}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_settings(output: Path, settings: dict[str, Any]) -> None:
    path = output / SETTINGS_FILE
    wanted = json.loads(json.dumps(settings, sort_keys=True))
    if path.exists():
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            found = None
        if found != wanted:
            raise BatchError(
                f"{output} holds outputs made with other settings ({path.name}: {found}); "
                f"use another --output or the same settings ({wanted})"
            )
        return
    partial = output / f"{SETTINGS_FILE}{PARTIAL_MARK}{uuid.uuid4().hex}"
    _write_file(partial, json.dumps(wanted, sort_keys=True, indent=1).encode())
    os.replace(partial, path)


def _remove_partials(output: Path) -> None:
    """Deletes what a killed run left half-written (the lock guarantees no other run is writing)."""
    for entry in output.iterdir():
        if entry.name.startswith(".") and PARTIAL_MARK in entry.name:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
