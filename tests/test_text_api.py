"""POST /api/images/<id>/text through the real app: the boxes transformers itself finds on the sent image, cached
answers, per-client rates, 4xx JSON for hostile input and a 5xx for a failing detector that spares the next
request."""

import io
import json

import numpy as np
import pytest
from backend_fixtures import image_bytes, vit_t_app
from text_fixtures import textured_image, transformers_boxes

from backend.text.grounding import GroundingParameters

PHRASES = "dog, red cat"


@pytest.fixture(scope="module")
def text_app(grounding_dino_folder):
    with vit_t_app(text_model=str(grounding_dino_folder), text_rate="1000/minute") as app:
        yield app


def upload(client, pixels):
    response = client.post("/api/images", data=image_bytes(pixels), content_type="image/png")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["id"]


def find(client, image_id, pixels, text=PHRASES, parameters=None, **fields):
    data = {"text": text, "image": (io.BytesIO(image_bytes(pixels)), "image.png"), **fields}
    if parameters is not None:
        data["parameters"] = parameters if isinstance(parameters, str) else json.dumps(parameters)
    return client.post(f"/api/images/{image_id}/text", data=data, content_type="multipart/form-data")


def test_boxes_are_transformers_own_and_the_answer_is_cached(text_app, grounding_dino_folder):
    client = text_app.test_client()
    pixels = textured_image()
    image_id = upload(client, pixels)
    parameters = {"box_threshold": 0.2, "text_threshold": 0.25, "max_instances": 6}
    response = find(client, image_id, pixels, parameters=parameters)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["cached"] is False and body["model"].startswith(str(grounding_dino_folder))
    expected, scores = transformers_boxes(
        grounding_dino_folder, pixels, ["dog", "red cat"], GroundingParameters(**parameters)
    )
    nonempty = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
    got = np.array([instance["box"] for instance in body["instances"]])
    assert len(got) == 6
    # The answer rounds boxes to a thousandth of a pixel.
    np.testing.assert_allclose(got, expected[nonempty][:6], atol=1e-3)
    np.testing.assert_allclose([i["score"] for i in body["instances"]], scores[nonempty][:6], atol=1e-4)
    assert {i["label"] for i in body["instances"]} <= {"dog", "red cat"}
    again = find(client, image_id, pixels, parameters=parameters).get_json()
    assert again["cached"] is True and again["instances"] == body["instances"]


@pytest.mark.parametrize(
    "fields, status, code",
    [
        ({"text": ""}, 400, "bad_text"),
        ({"text": "dog" * 86}, 400, "bad_text"),
        ({"text": ",".join(f"thing{i}" for i in range(17))}, 400, "bad_text"),
        ({"parameters": "{not json"}, 400, "bad_text"),
        ({"parameters": '{"box_threshold": 7}'}, 400, "bad_text"),
        ({"parameters": "[" * 5000}, 400, "bad_text"),
    ],
)
def test_hostile_text_and_parameters_are_4xx_json(text_app, fields, status, code):
    client = text_app.test_client()
    pixels = textured_image(seed=1)
    image_id = upload(client, pixels)
    text = fields.pop("text", PHRASES)
    response = find(client, image_id, pixels, text=text, **fields)
    assert response.status_code == status and response.get_json()["error"] == code, response.get_json()


def test_a_missing_or_other_image_is_4xx_json(text_app):
    client = text_app.test_client()
    pixels = textured_image(seed=2)
    image_id = upload(client, pixels)
    missing = client.post(f"/api/images/{image_id}/text", data={"text": "dog"}, content_type="multipart/form-data")
    assert missing.status_code == 400 and missing.get_json()["error"] == "missing_image"
    other = find(client, image_id, textured_image(seed=3))
    assert other.status_code == 400 and other.get_json()["error"] == "image_mismatch"
    not_an_image = client.post(
        f"/api/images/{image_id}/text",
        data={"text": "dog", "image": (io.BytesIO(b"<svg/>"), "x.svg")},
        content_type="multipart/form-data",
    )
    assert not_an_image.status_code == 415 and not_an_image.get_json()["error"] == "unsupported_image"
    as_json = client.post(f"/api/images/{image_id}/text", json={"text": "dog"})
    assert as_json.status_code == 415 and as_json.get_json()["error"] == "unsupported_media_type"


def test_a_failing_detector_answers_500_json_and_the_next_request_is_served(text_app, monkeypatch):
    client = text_app.test_client()
    pixels = textured_image(seed=4)
    image_id = upload(client, pixels)
    grounder = text_app.extensions["text"].grounder()
    real_forward = grounder.model.forward
    calls = []

    def fail_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("out of memory (simulated)")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(grounder.model, "forward", fail_once)
    failed = find(client, image_id, pixels, text="bird")
    assert failed.status_code == 500 and failed.get_json()["error"] == "detector_failed"
    assert "out of memory" in failed.get_json()["message"]
    served = find(client, image_id, pixels, text="bird")
    assert served.status_code == 200 and served.get_json()["cached"] is False


def test_text_requests_are_rate_limited_per_client(grounding_dino_folder):
    with vit_t_app(text_model=str(grounding_dino_folder), text_rate="2/minute") as app:
        client = app.test_client()
        pixels = textured_image(seed=5)
        image_id = upload(client, pixels)
        statuses = [find(client, image_id, pixels, text=f"thing{i}").status_code for i in range(3)]
        assert statuses == [200, 200, 429]
