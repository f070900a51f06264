"""Roboflow's own client, ``inference_sdk.InferenceHTTPClient.sam2_segment_image`` (from PyPI, in its own venv:
`make tool-venvs`), against this server's ``/sam2/segment_image`` over HTTP: a click and a box come back as the
outlines of the masks ``SamPredictor`` gives for them."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from backend_fixtures import SMALL_PHOTO, photo_jpeg, read_rgb, vit_t_app, vit_t_model
from tool_servers import INFERENCE_SDK_VENV, serve_app, tool_python

from backend.integrations.roboflow import mask_polygons
from backend.sam import SamPredictor

CLIENT_SCRIPT = """
import json, sys
from inference_sdk import InferenceHTTPClient

url, image, prompts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = InferenceHTTPClient(api_url=url, api_key="not-needed")
print(json.dumps(client.sam2_segment_image(image, prompts=prompts)))
"""


@pytest.fixture(scope="module")
def client_python():
    python = tool_python(INFERENCE_SDK_VENV)
    if python is None:
        pytest.skip("inference-sdk's venv is missing: `make tool-venvs` builds .venv-inference-sdk")
    return python


def test_inference_sdk_segments_a_click_and_a_box(client_python):
    path = photo_jpeg(*SMALL_PHOTO)
    prompts = [
        {"points": [{"x": 400, "y": 260, "positive": True}]},
        {"box": {"x": 400, "y": 267, "width": 300, "height": 200}, "points": [{"x": 300, "y": 200, "positive": False}]},
    ]
    with vit_t_app(roboflow=True) as app, serve_app(app) as url:
        run = subprocess.run(
            [str(client_python), "-c", CLIENT_SCRIPT, url, str(path), json.dumps(prompts)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert run.returncode == 0, run.stderr[-2000:]
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(answer["predictions"]) == 2 and answer["time"] >= 0

    predictor = SamPredictor(vit_t_model())
    predictor.set_image(read_rgb(path))
    click = predictor.predict(point_coords=np.array([[400, 260]]), point_labels=np.array([1]), multimask_output=True)
    boxed = predictor.predict(
        point_coords=np.array([[300, 200]]),
        point_labels=np.array([0]),
        box=np.array([250, 167, 550, 367]),
        multimask_output=False,
    )
    for prediction, (masks, scores, _) in zip(answer["predictions"], (click, boxed), strict=True):
        best = int(np.argmax(scores))
        assert 0.0 < masks[best].mean() < 1.0
        assert prediction["confidence"] == pytest.approx(float(scores[best]), abs=1e-4)
        assert prediction["masks"] == mask_polygons(masks[best]) and prediction["masks"]
