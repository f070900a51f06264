"""Batch labelling (python -m backend amg): outputs equal the generator's, resumable, byte-identical on Ray."""

from __future__ import annotations

import filecmp
import functools
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cluster_fixtures import (
    RANDOM_WEIGHTS_AMG,
    read_mask_folder,
    tiny_checkpoint,
    vit_t_checkpoint,
    write_images,
)
from PIL import Image

from backend.cluster import batch_amg
from backend.sam import SamAutomaticMaskGenerator
from backend.sam.amg import coco_decode_rle, rle_to_mask
from backend.sam.build import build_sam

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("amg")
    write_images(folder / "images", 3)
    return folder


@pytest.fixture(scope="module")
def tiny(workdir):
    return tiny_checkpoint(workdir)


def _run(workdir, tiny, output, mode, **kwargs):
    _, build = tiny
    return batch_amg.run(
        workdir / "images",
        output,
        build,
        model_id={"model": "tiny-seed0"},
        amg_kwargs=RANDOM_WEIGHTS_AMG,
        output_mode=mode,
        threads=1,
        **kwargs,
    )


@pytest.fixture(scope="module")
def local_outputs(workdir, tiny):
    outputs = {}
    for mode in ("binary_mask", "coco_rle"):
        outputs[mode] = workdir / f"local-{mode}"
        assert _run(workdir, tiny, outputs[mode], mode) == {"labelled": 3, "skipped": 0, "failed": 0}
    return outputs


def _direct(tiny, image_path, output_mode):
    _, build = tiny
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = SamAutomaticMaskGenerator(build().eval(), output_mode=output_mode, **RANDOM_WEIGHTS_AMG)
        return generator.generate(np.asarray(Image.open(image_path).convert("RGB")))
    finally:
        torch.set_num_threads(previous)


def test_mask_folders_hold_the_generators_masks_and_metadata(workdir, tiny, local_outputs):
    for image_path in sorted((workdir / "images").iterdir()):
        expected = _direct(tiny, image_path, "binary_mask")
        assert len(expected) > 3  # random weights still give several masks with these settings
        masks, lines = read_mask_folder(local_outputs["binary_mask"] / image_path.stem)
        assert sorted(p.name for p in (local_outputs["binary_mask"] / image_path.stem).iterdir()) == sorted(
            [f"{i}.png" for i in range(len(expected))] + ["metadata.csv"]
        )
        assert lines[0] == batch_amg.METADATA_HEADER
        assert len(lines) == len(expected) + 1
        for i, (mask, got, line) in enumerate(zip(masks, expected, lines[1:], strict=True)):
            png = Image.open(local_outputs["binary_mask"] / image_path.stem / f"{i}.png")
            assert png.mode == "L" and png.size == (mask.shape[1], mask.shape[0])
            assert set(np.unique(np.asarray(png)).tolist()) <= {0, 255}
            assert np.array_equal(mask, got["segmentation"]), (image_path.name, i)
            fields = line.split(",")
            assert len(fields) == 14
            assert int(fields[0]) == i and int(fields[1]) == got["area"] == int(mask.sum())
            assert [int(v) for v in fields[2:6]] == got["bbox"]
            assert [float(v) for v in fields[6:8]] == got["point_coords"][0]
            assert float(fields[8]) == got["predicted_iou"] and float(fields[9]) == got["stability_score"]
            assert [int(v) for v in fields[10:14]] == got["crop_box"]


def test_rle_json_is_the_sa1b_layout_with_the_generators_masks(workdir, tiny, local_outputs):
    images = sorted((workdir / "images").iterdir())
    for image_id, image_path in enumerate(images):
        expected = _direct(tiny, image_path, "coco_rle")
        document = json.loads((local_outputs["coco_rle"] / f"{image_path.stem}.json").read_text())
        width, height = Image.open(image_path).size
        assert document["image"] == {
            "image_id": image_id,
            "width": width,
            "height": height,
            "file_name": image_path.name,
        }
        assert [a["id"] for a in document["annotations"]] == list(range(len(expected)))
        for got, want in zip(document["annotations"], expected, strict=True):
            assert isinstance(got["segmentation"]["counts"], str) and got["segmentation"]["size"] == [height, width]
            assert got["segmentation"] == want["segmentation"]
            assert rle_to_mask(coco_decode_rle(got["segmentation"])).sum() == got["area"] == want["area"]
            for key in ("bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"):
                assert got[key] == want[key], key


def test_a_second_run_skips_everything_and_other_settings_are_refused(workdir, tiny, local_outputs):
    output = local_outputs["coco_rle"]
    before = {p.name: p.stat().st_mtime_ns for p in output.glob("*.json")}
    assert _run(workdir, tiny, output, "coco_rle") == {"labelled": 0, "skipped": 3, "failed": 0}
    assert {p.name: p.stat().st_mtime_ns for p in output.glob("*.json")} == before
    with pytest.raises(batch_amg.BatchError, match="other settings"):
        batch_amg.run(
            workdir / "images",
            output,
            tiny[1],
            model_id={"model": "tiny-seed0"},
            amg_kwargs={**RANDOM_WEIGHTS_AMG, "points_per_side": 5},
            output_mode="coco_rle",
        )


@pytest.mark.cluster
def test_ray_data_outputs_are_byte_identical_to_local(workdir, tiny, local_outputs, ray_address):
    for mode in ("binary_mask", "coco_rle"):
        output = workdir / f"ray-{mode}"
        counts = _run(workdir, tiny, output, mode, ray_address=ray_address, ray_workers=2)
        assert counts == {"labelled": 3, "skipped": 0, "failed": 0}
        _assert_same_tree(local_outputs[mode], output)


def _assert_same_tree(expected: Path, got: Path) -> None:
    names = sorted(p.relative_to(expected) for p in expected.rglob("*") if p.name != batch_amg.LOCK_FILE)
    assert names == sorted(p.relative_to(got) for p in got.rglob("*") if p.name != batch_amg.LOCK_FILE)
    for name in names:
        if (expected / name).is_file():
            assert filecmp.cmp(expected / name, got / name, shallow=False), name


def _cli(*args):
    return [sys.executable, "-m", "backend", "amg", *[str(a) for a in args]]


def _cli_settings():
    flags = []
    for name, value in RANDOM_WEIGHTS_AMG.items():
        flags += ["--" + name.replace("_", "-"), str(value)]
    return flags


def test_a_killed_run_resumes_without_redoing_finished_images(tmp_path):
    images = write_images(tmp_path / "images", 4)
    checkpoint = vit_t_checkpoint(tmp_path)
    output = tmp_path / "out"
    command = _cli(
        "--checkpoint", checkpoint, "--model-type", "vit_t", "--input", tmp_path / "images", "--output", output,
        "--device", "cpu", "--threads", "1", *_cli_settings(),
    )  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if any(p.is_dir() and not p.name.startswith(".") for p in output.glob("*")):
            break
        time.sleep(0.05)
    assert first.poll() is None, f"the run ended before it could be killed: {first.stderr.read()}"
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    first.stderr.close()

    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in output.iterdir() if not p.name.startswith(".")}
    assert 1 <= len(finished) < len(images)
    for name in finished:  # every output that exists is complete
        masks, lines = read_mask_folder(output / name)
        assert len(lines) == len(masks) + 1 == len(list((output / name).iterdir()))

    second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert f"{len(images)} images: {len(finished)} already done, {len(images) - len(finished)} to label" in (
        second.stderr
    )
    assert f"{len(images) - len(finished)} labelled, {len(finished)} skipped, 0 failed" in second.stderr
    assert sorted(p.name for p in output.iterdir() if not p.name.startswith(".")) == sorted(p.stem for p in images)
    for name, identity in finished.items():
        stat = (output / name).stat()
        assert (stat.st_ino, stat.st_mtime_ns) == identity, f"{name} was written again"
    # Nothing half-written is left behind by the killed run.
    assert [p.name for p in output.iterdir() if batch_amg.PARTIAL_MARK in p.name] == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--input": "missing-folder"}, "is neither an image file nor a folder"),
        ({"--checkpoint": "missing.pth"}, "is not a file"),
        ({"--model-type": "vit_z"}, "unknown SAM model type 'vit_z'"),
        ({"--points-per-side": "0"}, "points_per_side must be at least 1"),
    ],
)
def test_bad_arguments_give_a_message_and_exit_code_2(tmp_path, change, message):
    checkpoint = tmp_path / "some.pth"
    checkpoint.write_bytes(b"not used")
    write_images(tmp_path / "images", 1)
    args = {
        "--checkpoint": checkpoint,
        "--model-type": "vit_t",
        "--input": tmp_path / "images",
        "--output": tmp_path / "out",
        **change,
    }
    argv = [str(a) for pair in args.items() for a in pair]
    result = subprocess.run(_cli(*argv), cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.reference
def test_batch_rle_output_matches_the_reference_generator(reference_dir, tmp_path):
    with gzip.open(reference_dir / "amg_reduced_vit_seed0_dog.json.gz") as f:
        reference = json.load(f)
    config = json.loads((reference_dir / "reduced_vit_seed0_dog.json").read_text())["config"]
    build = functools.partial(build_sam, str(reference_dir / "reduced_vit_seed0.pth"), **config)
    image = reference_dir / "images" / "dog.jpg"
    counts = batch_amg.run(
        image, tmp_path, build, model_id={"model": "reduced"}, amg_kwargs=reference["params"], output_mode="coco_rle"
    )
    assert counts == {"labelled": 1, "skipped": 0, "failed": 0}
    document = json.loads((tmp_path / "dog.json").read_text())
    height, width = reference["image_hw"]
    assert document["image"] == {"image_id": 0, "width": width, "height": height, "file_name": "dog.jpg"}
    expected = reference["annotations"]
    assert len(document["annotations"]) == len(expected)
    for i, (got, ref) in enumerate(zip(document["annotations"], expected, strict=True)):
        assert got["point_coords"] == ref["point_coords"] and got["crop_box"] == ref["crop_box"], i
        assert got["predicted_iou"] == pytest.approx(ref["predicted_iou"], abs=1e-3), i
        assert got["stability_score"] == pytest.approx(ref["stability_score"], abs=1e-3), i
        agreement = (rle_to_mask(coco_decode_rle(got["segmentation"])) == rle_to_mask(ref["segmentation"])).mean()
        assert agreement >= 0.995, f"mask {i}: {agreement:.4f} of pixels agree"
