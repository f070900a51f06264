"""Everything mode over HTTP: jobs, progress, COCO RLE results, caching, bounds, errors."""

import json
import threading
import time

import numpy as np
import pytest
import torch
from backend_fixtures import SMALL_PHOTO, model_embedding, photo, photo_jpeg, read_rgb
from backend_fixtures import reduced_sam as build_reduced_sam
from flask import Flask

from backend.sam.amg import coco_decode_rle, rle_to_mask
from backend.sam.automatic import SamAutomaticMaskGenerator
from backend.sam.transforms import ResizeLongestSide
from backend.server.everything_routes import create_everything_blueprint
from backend.services.everything import EverythingSource

DOG_HW = (534, 800)
SMALL_RUN = {
    "points_per_side": 2,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.6,
    "stability_score_offset": 0.01,
    "box_nms_thresh": 1.0,
}


@pytest.fixture(scope="module")
def reduced_sam():
    return build_reduced_sam()


@pytest.fixture(scope="module")
def dog_source(reduced_sam):
    """The reduced model's embedding of an 800x534 photo (scikit-image's cat, enlarged)."""
    embedding = model_embedding(reduced_sam, photo(*SMALL_PHOTO))
    input_size = ResizeLongestSide.get_preprocess_shape(*DOG_HW, 1024)
    return EverythingSource(model=reduced_sam, embedding=embedding, original_size=DOG_HW, input_size=input_size)


def _client(sources, **kwargs):
    app = Flask(__name__)
    blueprint = create_everything_blueprint(sources.get, **kwargs)
    app.register_blueprint(blueprint)
    return app.test_client(), blueprint.service


def _wait(client, job_id, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/everything/{job_id}").get_json()
        if body["status"] in ("done", "error"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")


def test_a_job_returns_the_generators_masks_as_coco_rle(dog_source, reduced_sam):
    client, service = _client({"dog": dog_source})
    response = client.post("/api/images/dog/everything", json=SMALL_RUN)
    assert response.status_code == 202
    started = response.get_json()
    assert started["status_url"] == f"/api/everything/{started['job_id']}"
    body = _wait(client, started["job_id"])
    assert body["status"] == "done" and body["progress"] == 1.0
    result = body["result"]
    assert (result["image_id"], result["height"], result["width"]) == ("dog", 534, 800)

    embedding = torch.from_numpy(dog_source.embedding)[None]
    direct = SamAutomaticMaskGenerator(reduced_sam, output_mode="uncompressed_rle", **SMALL_RUN).generate(
        np.zeros((534, 800, 3), dtype=np.uint8), image_embedding=embedding
    )
    assert len(result["annotations"]) == len(direct) >= 4
    for got, want in zip(result["annotations"], direct, strict=True):
        assert got["segmentation"]["size"] == [534, 800] and isinstance(got["segmentation"]["counts"], str)
        mask = rle_to_mask(coco_decode_rle(got["segmentation"]))
        np.testing.assert_array_equal(mask, rle_to_mask(want["segmentation"]))
        assert got["area"] == int(mask.sum()) == want["area"]
        for key in ("bbox", "point_coords", "crop_box"):
            assert got[key] == want[key]
        assert got["predicted_iou"] == pytest.approx(want["predicted_iou"])
        assert got["stability_score"] == pytest.approx(want["stability_score"])
    service.close()


def test_same_image_and_parameters_reuse_the_job_and_its_result(dog_source):
    client, service = _client({"dog": dog_source})
    first = client.post("/api/images/dog/everything", json=SMALL_RUN).get_json()
    done = _wait(client, first["job_id"])
    again = client.post("/api/images/dog/everything", json=dict(SMALL_RUN)).get_json()
    assert again["job_id"] == first["job_id"] and again["cached"] and again["status"] == "done"
    assert client.get(again["status_url"]).get_json()["result"] == done["result"]
    other = client.post("/api/images/dog/everything", json={**SMALL_RUN, "box_nms_thresh": 0.5}).get_json()
    assert other["job_id"] != first["job_id"] and not other["cached"]
    _wait(client, other["job_id"])
    service.close()


def test_unknown_image_and_unknown_job_are_404_json(dog_source):
    client, service = _client({"dog": dog_source})
    response = client.post("/api/images/nope/everything", json={})
    assert response.status_code == 404 and response.get_json()["error"] == "unknown_image"
    response = client.get("/api/everything/0123abcd")
    assert response.status_code == 404 and response.get_json()["error"] == "unknown_job"
    assert client.get("/api/everything/0123abcd/events").status_code == 404
    service.close()


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"points_per_side": 0}, "points_per_side must be between 1 and 64"),
        ({"points_per_side": 500}, "points_per_side must be between 1 and 64"),
        ({"points_per_side": 2.5}, "points_per_side must be a whole number"),
        ({"points_per_side": "32"}, "points_per_side must be a number"),
        ({"points_per_side": True}, "points_per_side must be a number"),
        ({"pred_iou_thresh": 1.5}, "pred_iou_thresh must be between 0 and 1"),
        ({"stability_score_thresh": -0.1}, "stability_score_thresh must be between 0 and 1"),
        ({"box_nms_thresh": None}, "box_nms_thresh must be a number"),
        ({"min_mask_region_area": -1}, "min_mask_region_area must be between"),
        ({"crop_n_layers": 7}, "crop_n_layers must be between 0 and 2"),
        ({"points_per_sid": 8}, "unknown parameter(s) points_per_sid"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_parameters_are_400_with_the_reason(dog_source, body, fragment):
    client, service = _client({"dog": dog_source})
    response = client.post("/api/images/dog/everything", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"] == "bad_parameters"
    assert fragment in response.get_json()["message"]
    assert service.stats()["queued"] + service.stats()["running"] == 0
    service.close()


def test_a_body_that_is_not_json_is_400(dog_source):
    client, service = _client({"dog": dog_source})
    response = client.post("/api/images/dog/everything", data=b"points=8", content_type="text/plain")
    assert response.status_code == 400 and response.get_json()["error"] == "bad_json"
    # JSON sent without a JSON content type is still read (and validated).
    response = client.post("/api/images/dog/everything", data=b'{"points_per_side": 0}', content_type="text/plain")
    assert response.status_code == 400 and response.get_json()["error"] == "bad_parameters"
    service.close()


def test_crops_without_the_images_pixels_are_refused(dog_source):
    client, service = _client({"dog": dog_source})
    response = client.post("/api/images/dog/everything", json={"crop_n_layers": 1})
    assert response.status_code == 409 and response.get_json()["error"] == "image_unavailable"
    service.close()


# --- scheduling, with a stand-in generator that waits to be released -----------------------------------------


class _GatedGenerator:
    def __init__(self, gate: threading.Event, fail: bool = False) -> None:
        self.gate, self.fail = gate, fail

    def generate(self, image, image_embedding=None, progress=None):
        progress(0.5)
        if not self.gate.wait(30):
            raise RuntimeError("test gate never opened")
        if self.fail:
            raise RuntimeError("decoder exploded")
        progress(1.0)
        return [
            {
                "segmentation": {"size": [2, 3], "counts": "024"},
                "area": 2,
                "bbox": [0, 0, 0, 1],
                "predicted_iou": 0.9,
                "point_coords": [[0.5, 0.5]],
                "stability_score": 1.0,
                "crop_box": [0, 0, 3, 2],
            }
        ]


def _gated_client(max_concurrent=1, max_jobs=32, fail=False):
    gate = threading.Event()
    source = EverythingSource(
        model=None, embedding=np.zeros((256, 64, 64), np.float32), original_size=(2, 3), input_size=(683, 1024)
    )
    client, service = _client(
        {"a": source, "b": source, "c": source},
        max_concurrent=max_concurrent,
        max_jobs=max_jobs,
        generator_factory=lambda model, params: _GatedGenerator(gate, fail),
    )
    return client, service, gate


def _status(client, job_id):
    return client.get(f"/api/everything/{job_id}").get_json()


def _wait_status(client, job_id, status, timeout=10.0):
    deadline = time.monotonic() + timeout
    while _status(client, job_id)["status"] != status:
        assert time.monotonic() < deadline, f"job never reached {status}: {_status(client, job_id)}"
        time.sleep(0.01)


def test_only_max_concurrent_jobs_run_the_rest_queue():
    client, service, gate = _gated_client(max_concurrent=1)
    first = client.post("/api/images/a/everything").get_json()["job_id"]
    second = client.post("/api/images/b/everything").get_json()["job_id"]
    _wait_status(client, first, "running")
    deadline = time.monotonic() + 10
    while _status(client, first)["progress"] != 0.5:  # the generator's progress reaches the client
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    assert _status(client, second)["status"] == "queued"
    gate.set()
    _wait_status(client, second, "done")
    assert _status(client, first)["status"] == "done"
    assert _status(client, second)["result"]["annotations"][0]["segmentation"] == {"size": [2, 3], "counts": "024"}
    service.close()


def test_the_job_list_is_bounded_and_forgets_the_oldest_finished_job():
    client, service, gate = _gated_client(max_concurrent=1, max_jobs=2)
    first = client.post("/api/images/a/everything").get_json()["job_id"]
    client.post("/api/images/b/everything")
    busy = client.post("/api/images/c/everything")
    assert busy.status_code == 503 and busy.get_json()["error"] == "busy" and busy.headers["Retry-After"]
    gate.set()
    _wait_status(client, first, "done")
    time.sleep(0.1)
    third = client.post("/api/images/c/everything")
    assert third.status_code == 202
    assert client.get(f"/api/everything/{first}").status_code == 404
    service.close()


def test_a_failed_job_says_why_and_a_retry_starts_afresh():
    client, service, gate = _gated_client(fail=True)
    gate.set()
    job_id = client.post("/api/images/a/everything").get_json()["job_id"]
    _wait_status(client, job_id, "error")
    assert "decoder exploded" in _status(client, job_id)["message"]
    retry = client.post("/api/images/a/everything").get_json()
    assert retry["job_id"] != job_id and not retry["cached"]
    service.close()


def test_events_stream_progress_then_the_result():
    client, service, gate = _gated_client()
    job_id = client.post("/api/images/a/everything").get_json()["job_id"]
    _wait_status(client, job_id, "running")
    threading.Timer(0.3, gate.set).start()
    response = client.get(f"/api/everything/{job_id}/events")
    assert response.mimetype == "text/event-stream"
    events = [block for block in response.get_data(as_text=True).split("\n\n") if block.startswith("event:")]
    names = [block.split("\n")[0].split(": ", 1)[1] for block in events]
    assert names[0] == "progress" and names[-1] == "done"
    final = json.loads(events[-1].split("data: ", 1)[1])
    assert final["progress"] == 1.0 and len(final["result"]["annotations"]) == 1
    service.close()


# --- the real app: upload, then everything mode from the cached embedding ------------------------------------


def test_everything_through_the_real_app_uses_the_uploaded_images_embedding(reduced_sam, tmp_path):
    from backend.server.app import create_app
    from backend.services.everything import resolver_from_encoder
    from backend.services.weights import WeightsInfo

    app = create_app(
        {
            "model": reduced_sam,
            "weights_info": WeightsInfo(
                "vit_b", "real", "reduced-vit-test", None, "seeded random reduced ViT for tests"
            ),
            "decoders": [],
            "data_dir": str(tmp_path / "data"),
            "device": "cpu",
            "precision": "fp32",
            "TESTING": True,
        }
    )
    encoder = app.extensions["sam"].encoder
    if "everything" not in app.blueprints:  # until create_app registers it itself
        app.register_blueprint(create_everything_blueprint(resolver_from_encoder(encoder)))
    client = app.test_client()
    try:
        upload = client.post("/api/images", data=photo_jpeg(*SMALL_PHOTO).read_bytes(), content_type="image/jpeg")
        assert upload.status_code == 200, upload.get_json()
        image_id = upload.get_json()["id"]
        response = client.post(f"/api/images/{image_id}/everything", json=SMALL_RUN)
        assert response.status_code == 202, response.get_json()
        body = _wait(client, response.get_json()["job_id"])
        assert body["status"] == "done", body
        assert encoder.images_encoded == 1  # the job decoded from the cached embedding

        own = model_embedding(reduced_sam, read_rgb(photo_jpeg(*SMALL_PHOTO)))
        expected = SamAutomaticMaskGenerator(reduced_sam, output_mode="uncompressed_rle", **SMALL_RUN).generate(
            np.zeros((534, 800, 3), dtype=np.uint8), image_embedding=torch.from_numpy(own)[None]
        )
        annotations = body["result"]["annotations"]
        assert len(annotations) == len(expected) >= 4
        for got, want in zip(annotations, expected, strict=True):
            mask = rle_to_mask(coco_decode_rle(got["segmentation"]))
            assert (mask == rle_to_mask(want["segmentation"])).mean() >= 0.995
            assert got["predicted_iou"] == pytest.approx(want["predicted_iou"], abs=1e-3)
    finally:
        encoder.close()
        app.extensions["everything"].close()


# --- cancelling -------------------------------------------------------------------------------------------


def test_delete_cancels_a_queued_job_which_then_never_runs():
    client, service, gate = _gated_client(max_concurrent=1)
    first = client.post("/api/images/a/everything").get_json()["job_id"]
    second = client.post("/api/images/b/everything").get_json()["job_id"]
    _wait_status(client, first, "running")
    response = client.delete(f"/api/everything/{second}")
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    gate.set()
    _wait_status(client, first, "done")
    time.sleep(0.2)
    assert _status(client, second)["status"] == "cancelled" and "result" not in _status(client, second)
    # Asking again for the same image and parameters starts afresh instead of returning the cancelled job.
    again = client.post("/api/images/b/everything").get_json()
    assert again["job_id"] != second and not again["cached"]
    _wait_status(client, again["job_id"], "done")
    service.close()


class _SteppingGenerator:
    """Stands in for a long grid: 1000 batches of 10 ms, each reported through ``progress``."""

    def __init__(self) -> None:
        self.batches_done = 0

    def generate(self, image, image_embedding=None, progress=None):
        for step in range(1000):
            time.sleep(0.01)
            self.batches_done += 1
            progress((step + 1) / 1000)
        return []


def test_delete_stops_a_running_job_at_its_next_batch():
    generator = _SteppingGenerator()
    source = EverythingSource(
        model=None, embedding=np.zeros((256, 64, 64), np.float32), original_size=(2, 3), input_size=(683, 1024)
    )
    client, service = _client({"a": source}, generator_factory=lambda model, params: generator)
    job_id = client.post("/api/images/a/everything").get_json()["job_id"]
    deadline = time.monotonic() + 10
    while generator.batches_done < 5:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert client.delete(f"/api/everything/{job_id}").get_json()["status"] == "cancelled"
    stopped_at = generator.batches_done
    time.sleep(0.5)
    assert generator.batches_done <= stopped_at + 1  # It stopped at the next batch boundary.
    body = _status(client, job_id)
    assert body["status"] == "cancelled" and body["progress"] < 0.5 and "result" not in body
    service.close()


def test_delete_of_an_unknown_job_is_404_and_a_finished_job_stays_done():
    client, service, gate = _gated_client()
    gate.set()
    assert client.delete("/api/everything/0123abcd").status_code == 404
    job_id = client.post("/api/images/a/everything").get_json()["job_id"]
    _wait_status(client, job_id, "done")
    assert client.delete(f"/api/everything/{job_id}").get_json()["status"] == "done"
    assert _status(client, job_id)["result"]["annotations"]
    service.close()


def test_events_stream_each_batchs_masks_and_they_add_up_to_the_result(dog_source):
    client, service = _client({"dog": dog_source})
    params = {**SMALL_RUN, "points_per_side": 8}  # batches of 4, 16, 32 and 12 points
    job_id = client.post("/api/images/dog/everything", json=params).get_json()["job_id"]
    response = client.get(f"/api/everything/{job_id}/events")
    blocks = [block for block in response.get_data(as_text=True).split("\n\n") if block.startswith("event:")]
    events = [(b.split("\n")[0].split(": ", 1)[1], json.loads(b.split("data: ", 1)[1])) for b in blocks]
    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("masks") == 4
    # Masks come before the job ends, between progress reports, as COCO RLE with their scores.
    assert names.index("masks") < names.index("progress", names.index("masks"))
    shown = {}
    for name, update in events:
        if name != "masks":
            continue
        for mask_id in update["retracted"]:
            del shown[mask_id]
        for mask in update["masks"]:
            assert isinstance(mask["segmentation"]["counts"], str) and isinstance(mask["predicted_iou"], float)
            shown[mask.pop("id")] = mask
    final = events[-1][1]["result"]["annotations"]
    assert sorted(json.dumps(m, sort_keys=True) for m in shown.values()) == sorted(
        json.dumps(m, sort_keys=True) for m in final
    )
    assert "updates" not in client.get(f"/api/everything/{job_id}").get_json()  # polls stay small
    service.close()
