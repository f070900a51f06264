"""`python -m backend label`: text prompts over a folder into one COCO instance file that pycocotools loads, one
category per phrase, each mask SamPredictor's box-prompt mask of the detector's box; resumable; bad input exits 2."""

import json
import time

import numpy as np
import pytest
from backend_fixtures import vit_t_model
from PIL import Image
from text_fixtures import textured_image

from backend.__main__ import main

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("label-in")
    for seed in range(2):
        Image.fromarray(textured_image(seed=seed)).save(folder / f"photo{seed}.png")
    (folder / "notes.png").write_bytes(b"not an image")
    return folder


def label(images, output, text_model, *extra):
    return main(
        ["label", "--text", "dog, red cat", "--input", str(images), "--output", str(output), "--text-model",
         str(text_model), "--box-threshold", "0.2", "--max-instances", "4", "--threads", "1", *extra]
    )  # fmt: skip


def test_label_writes_coco_that_pycocotools_loads_with_sam_box_masks(images, tmp_path, grounding_dino_folder, capsys):
    from pycocotools.coco import COCO

    from backend.sam import SamPredictor

    output = tmp_path / "out"
    assert label(images, output, grounding_dino_folder) == 0
    err = capsys.readouterr().err
    assert "3/3" in err and "1 failed" in err  # the progress bar; the unreadable file reported, not fatal
    coco = COCO(str(output / "instances.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["dog", "red cat"]
    assert len(coco.getImgIds()) == 2
    predictor = SamPredictor(vit_t_model())
    for image in coco.loadImgs(coco.getImgIds()):
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert len(annotations) == 4
        pixels = np.array(Image.open(images / image["file_name"]).convert("RGB"))
        predictor.set_image(pixels)
        for annotation in annotations:
            expected, _, _ = predictor.predict(box=np.array(annotation["detector_box"]), multimask_output=False)
            got = coco.annToMask(annotation).astype(bool)
            assert (got == expected[0]).mean() >= 0.995
            assert annotation["area"] == int(got.sum())


def test_a_second_run_skips_what_is_done_and_other_settings_are_refused(
    images, tmp_path, grounding_dino_folder, capsys
):
    output = tmp_path / "out"
    assert label(images, output, grounding_dino_folder) == 0
    first = json.loads((output / "instances.json").read_text())
    (output / "images" / "photo1.json").unlink()  # as if the run had been killed before this image
    capsys.readouterr()
    assert label(images, output, grounding_dino_folder) == 0
    assert "1 labelled, 1 skipped, 1 failed" in capsys.readouterr().err
    assert json.loads((output / "instances.json").read_text())["annotations"] == first["annotations"]
    assert label(images, output, grounding_dino_folder, "--max-instances", "2") == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "x" * 300, ",".join(f"p{i}" for i in range(17))])
def test_unusable_text_exits_2_with_the_reason(images, tmp_path, grounding_dino_folder, text, capsys):
    code = main(
        [
            "label",
            "--text",
            text,
            "--input",
            str(images),
            "--output",
            str(tmp_path / "o"),
            "--text-model",
            str(grounding_dino_folder),
        ]
    )
    assert code == 2 and "error:" in capsys.readouterr().err


@pytest.mark.cluster
def test_ray_data_labels_the_same_as_a_local_run(images, tmp_path, grounding_dino_folder, ray_address):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert label(images, local, grounding_dino_folder) == 0
    assert label(images, on_ray, grounding_dino_folder, "--ray-address", ray_address, "--ray-workers", "1") == 0
    assert json.loads((on_ray / "instances.json").read_text()) == json.loads((local / "instances.json").read_text())


@pytest.mark.cluster
def test_no_wait_on_a_full_cluster_exits_3_and_says_what_holds_it(
    images, tmp_path, grounding_dino_folder, ray_address, capsys
):
    import ray

    from backend.cluster.ray_pool import EXIT_CLUSTER_FULL

    # An earlier in-process `label --ray-address` leaves this process connected (to the same session cluster).
    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=ray_address, log_to_driver=False, configure_logging=False)
    holders = []
    try:

        @ray.remote
        class CpuHolder:
            def ready(self):
                return True

        # Every CPU free now (other tests' encoder replicas may hold some of the session's cluster), and any freed
        # a moment later (an earlier run's actors go away asynchronously): hold until none is free twice in a row.
        calm = 0
        deadline = time.monotonic() + 60
        while calm < 2 and time.monotonic() < deadline:
            free = ray.available_resources().get("CPU", 0)
            if free > 0:
                holders.append(CpuHolder.options(num_cpus=free).remote())
                ray.get(holders[-1].ready.remote(), timeout=120)
                calm = 0
            else:
                calm += 1
            time.sleep(1)
        capsys.readouterr()
        started = time.monotonic()
        # `label` reuses this process's connection to the cluster (and leaves it open).
        code = label(images, tmp_path / "out", grounding_dino_folder, "--ray-address", ray_address, "--no-wait")
        elapsed = time.monotonic() - started
    finally:
        for holder in holders:
            ray.kill(holder)  # Frees the held CPUs for the tests after this one.
        if connected_here:
            ray.shutdown()
    err = capsys.readouterr().err
    assert code == EXIT_CLUSTER_FULL, err
    assert elapsed < 30
    assert "cannot place one actor of 1 CPU: the cluster has 0 of 4 CPU free; held by" in err
    assert "CpuHolder (job " in err and "not waiting (--no-wait)" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "instances.json").exists()
