"""Everything mode with crop layers over HTTP: the client sends the uploaded image with the job (the server
keeps no pixels after encoding), the server checks it is the image the id names, and the job segments the
tiles. Real app, seeded random vit_t."""

import io
import json
import time

import numpy as np
import pytest
from backend_fixtures import image_bytes, photo, vit_t_app
from PIL import Image

PARAMS = {"points_per_side": 4, "crop_n_layers": 1, "pred_iou_thresh": 0, "stability_score_thresh": 0}


@pytest.fixture(scope="module")
def app():
    with vit_t_app() as app:
        yield app


@pytest.fixture(scope="module")
def uploaded(app):
    """A small photo (scikit-image's cat at 160x107), uploaded: (its PNG bytes, the server's answer)."""
    png = image_bytes(photo("chelsea", (160, 107)))
    response = app.test_client().post("/api/images", data=png, content_type="image/png")
    assert response.status_code == 200, response.get_json()
    return png, response.get_json()


def _start(client, image_id, params, image: bytes | None):
    data = {"parameters": json.dumps(params)}
    if image is not None:
        data["image"] = (io.BytesIO(image), "image.png")
    return client.post(f"/api/images/{image_id}/everything", data=data, content_type="multipart/form-data")


class RecordingGenerator:
    """Stands in for the mask generator (the real one with crops is tested in test_automatic): records what
    the job hands it."""

    calls: list = []

    def __init__(self, model, params):
        self.params = params

    def generate(self, image, image_embedding=None, progress=None):
        self.calls.append((self.params, np.array(image), image_embedding.shape))
        return []


def test_crops_get_the_pixels_sent_with_the_job(app, uploaded):
    png, info = uploaded
    service = app.extensions["everything"]
    real_factory, service.generator_factory = service.generator_factory, RecordingGenerator
    try:
        client = app.test_client()
        response = _start(client, info["id"], PARAMS, png)
        assert response.status_code == 202, response.get_json()
        status_url = response.get_json()["status_url"]
        deadline = time.monotonic() + 60
        while (job := client.get(status_url).get_json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
    finally:
        service.generator_factory = real_factory
    assert job["status"] == "done", job
    [(params, image, embedding_shape)] = RecordingGenerator.calls
    assert params["crop_n_layers"] == 1
    # Exactly the upload's pixels (decoded as the upload was), with the cached embedding of the whole image.
    assert np.array_equal(image, np.array(Image.open(io.BytesIO(png)).convert("RGB")))
    assert tuple(embedding_shape) == (1, 256, 64, 64)


def test_the_image_sent_must_be_the_one_the_id_names(app, uploaded):
    _, info = uploaded
    other = image_bytes(photo("coffee", (160, 107)))
    response = _start(app.test_client(), info["id"], PARAMS, other)
    assert response.status_code == 400 and response.get_json()["error"] == "image_mismatch"


def test_a_multipart_job_needs_the_image_and_json_parameters(app, uploaded):
    _, info = uploaded
    client = app.test_client()
    response = _start(client, info["id"], PARAMS, None)
    assert response.status_code == 400 and response.get_json()["error"] == "missing_image"
    response = client.post(
        f"/api/images/{info['id']}/everything", data={"parameters": "{not json"}, content_type="multipart/form-data"
    )
    assert response.status_code == 400 and response.get_json()["error"] == "bad_json"
    # Without the image, crops are still refused with a plain reason
    # (other parameters than the job above, whose finished result would be served from the job cache)
    response = client.post(f"/api/images/{info['id']}/everything", json={**PARAMS, "points_per_side": 5})
    assert response.status_code == 409 and response.get_json()["error"] == "image_unavailable"
