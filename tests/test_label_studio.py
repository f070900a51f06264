"""A real Label Studio (PyPI's label-studio in .venv-label-studio, started on loopback with SQLite) connected to
this server's ``/label-studio`` ML backend and driven through its own API: an interactive smart-tool request
and the "Retrieve predictions" pre-annotation action. The brush RLE Label Studio hands back, decoded by
Label Studio's own SDK (in its venv), must be the mask ``SamPredictor`` gives for the same prompt."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import time

import numpy as np
import pytest
import requests
from backend_fixtures import SMALL_PHOTO, photo_jpeg, read_rgb, vit_t_app, vit_t_model
from tool_servers import (
    LABEL_STUDIO_TOKEN,
    LABEL_STUDIO_VENV,
    label_studio,
    label_studio_data_dir,
    serve_app,
    tool_python,
)

from backend.sam import SamPredictor

pytestmark = pytest.mark.timeout(600)

LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Cat" background="#ff0000"/>
    <Label value="Dog" background="#0000ff"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Cat" smart="true" background="#ff0000"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true">
    <Label value="Cat" smart="true" background="#ff0000"/>
  </RectangleLabels>
</View>"""
WIDTH, HEIGHT = SMALL_PHOTO[1]

DECODE_SCRIPT = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle

regions = json.load(sys.stdin)
masks = [decode_rle(r["value"]["rle"]).reshape(r["original_height"], r["original_width"], 4)[:, :, 3] > 0 for r in regions]
np.save(sys.stdout.buffer, np.stack(masks))
"""


@dataclasses.dataclass
class RecordingGrounder:
    """A real tiny random Grounding DINO (backend/text, built offline from a transformers config), with every
    call and answer recorded so the test knows the boxes the server turned into brushes. Its thresholds are
    opened: random weights score low, and the test needs instances to compare."""

    grounder: object
    calls: list = dataclasses.field(default_factory=list)

    def __call__(self, pixels: np.ndarray, phrases: list[str]) -> list:
        from backend.text.grounding import GroundingParameters

        params = GroundingParameters(box_threshold=0.0, text_threshold=0.0, max_instances=3)
        found = self.grounder.ground(pixels, phrases, params)
        self.calls.append((pixels.shape, tuple(phrases), found))
        return found


@pytest.fixture(scope="module")
def ls_python():
    python = tool_python(LABEL_STUDIO_VENV)
    if python is None:
        pytest.skip("Label Studio's venv is missing: `make tool-venvs` builds .venv-label-studio")
    return python


@pytest.fixture(scope="module")
def studio(ls_python, tmp_path_factory):
    started = time.monotonic()
    with label_studio(label_studio_data_dir(tmp_path_factory.mktemp("ls") / "data")) as url:
        print(f"Label Studio answered after {time.monotonic() - started:.1f} s")
        session = requests.Session()
        session.headers["Authorization"] = f"Token {LABEL_STUDIO_TOKEN}"
        yield url, session


@pytest.fixture(scope="module")
def grounder(tmp_path_factory):
    from text_fixtures import build_text_model

    from backend.config import Config
    from backend.text.weights import load_grounder

    folder = build_text_model(tmp_path_factory.mktemp("grounding-dino"), "grounding-dino")
    detector, info = load_grounder(Config.from_env({}, {"text_model": str(folder)}))
    assert info.weights == "real"
    return RecordingGrounder(detector)


@pytest.fixture(scope="module")
def backend(studio, grounder):
    url, _ = studio
    settings = {"label_studio_url": url, "label_studio_api_key": LABEL_STUDIO_TOKEN, "grounder": grounder}
    with vit_t_app(**settings) as app, serve_app(app) as backend_url:
        yield backend_url


@pytest.fixture(scope="module")
def project(studio, backend):
    """A project with the smart tools and BrushLabels, the photo uploaded, this server connected interactively."""
    url, session = studio
    created = session.post(f"{url}/api/projects", json={"title": "SAM", "label_config": LABEL_CONFIG}, timeout=60)
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]
    with open(photo_jpeg(*SMALL_PHOTO), "rb") as file:
        imported = session.post(
            f"{url}/api/projects/{project_id}/import", files={"file": ("photo.jpg", file, "image/jpeg")}, timeout=60
        )
    assert imported.status_code == 201 and imported.json()["task_count"] == 1, imported.text
    [task] = session.get(f"{url}/api/tasks", params={"project": project_id}, timeout=60).json()["tasks"]
    assert task["data"]["image"].startswith("/data/upload/")
    connected = session.post(
        f"{url}/api/ml",
        json={"url": f"{backend}/label-studio", "project": project_id, "is_interactive": True, "title": "SAM"},
        timeout=60,
    )
    assert connected.status_code == 201, connected.text
    assert connected.json()["readable_state"] == "Connected", connected.json()
    return {"id": project_id, "task": task["id"], "ml": connected.json()["id"]}


@pytest.fixture(scope="module")
def predictor():
    predictor = SamPredictor(vit_t_model())
    predictor.set_image(read_rgb(photo_jpeg(*SMALL_PHOTO)))
    return predictor


def decode_with_label_studio_sdk(ls_python, regions: list[dict]) -> np.ndarray:
    run = subprocess.run(
        [str(ls_python), "-c", DECODE_SCRIPT], input=json.dumps(regions).encode(), capture_output=True, timeout=120
    )
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    return np.load(io.BytesIO(run.stdout))


def region(kind: str, value: dict, **extra) -> dict:
    return {
        "original_width": WIDTH,
        "original_height": HEIGHT,
        "image_rotation": 0,
        "value": value,
        "id": f"{kind[:3]}{len(value)}",
        "from_name": "kp" if kind == "keypointlabels" else "rect",
        "to_name": "image",
        "type": kind,
        "origin": "manual",
        **extra,
    }


def test_interactive_smart_tools_give_the_predictors_mask(studio, project, predictor, ls_python):
    url, session = studio
    context = {
        "result": [
            region("keypointlabels", {"x": 50.0, "y": 50.0, "width": 0.6, "keypointlabels": ["Cat"]}, is_positive=True),
            region(
                "keypointlabels", {"x": 30.0, "y": 40.0, "width": 0.6, "keypointlabels": ["Cat"]}, is_positive=False
            ),
            region(
                "rectanglelabels", {"x": 20.0, "y": 15.0, "width": 55.0, "height": 65.0, "rectanglelabels": ["Cat"]}
            ),
        ]
    }
    answer = session.post(
        f"{url}/api/ml/{project['ml']}/interactive-annotating",
        json={"task": project["task"], "context": context},
        timeout=300,
    )
    assert answer.status_code == 200, answer.text
    data = answer.json().get("data")
    assert data, answer.json()
    [brush] = data["result"]
    assert brush["type"] == "brushlabels" and brush["value"]["brushlabels"] == ["Cat"]
    assert (brush["original_width"], brush["original_height"]) == (WIDTH, HEIGHT)
    [got] = decode_with_label_studio_sdk(ls_python, [brush])

    masks, scores, _ = predictor.predict(
        point_coords=np.array([[0.5 * WIDTH, 0.5 * HEIGHT], [0.3 * WIDTH, 0.4 * HEIGHT]]),
        point_labels=np.array([1, 0]),
        box=np.array([0.2 * WIDTH, 0.15 * HEIGHT, 0.75 * WIDTH, 0.8 * HEIGHT]),
        multimask_output=False,
    )
    assert 0.0 < masks[0].mean() < 1.0
    assert (got == masks[0]).mean() >= 0.995
    assert brush["score"] == pytest.approx(float(scores[0]), abs=1e-4)


def test_retrieve_predictions_grounds_each_brush_label(studio, project, predictor, grounder, ls_python):
    url, session = studio
    action = session.post(
        f"{url}/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project["id"]},
        json={"selectedItems": {"all": True, "excluded": []}},
        timeout=300,
    )
    assert action.status_code == 200, action.text
    assert grounder.calls and grounder.calls[-1][1] == ("cat", "dog")
    found = grounder.calls[-1][2]
    assert found, "the tiny detector found nothing even with its thresholds opened"
    predictions = session.get(f"{url}/api/predictions", params={"task": project["task"]}, timeout=60).json()
    [prediction] = [p for p in predictions if p["result"]]
    brushes = prediction["result"]
    assert prediction["model_version"].startswith("segment-anything-")
    expected = []
    for instance in found:  # The server keeps an instance whose box gives a non-empty mask, in the detector's order.
        masks, _, _ = predictor.predict(box=np.array(instance.box), multimask_output=False)
        if masks[0].any():
            expected.append((masks[0], {"cat": "Cat", "dog": "Dog"}.get(instance.label.strip().lower(), "Cat")))
    assert len(brushes) == len(expected) >= 1
    got = decode_with_label_studio_sdk(ls_python, brushes)
    for brush, mask, (want, label) in zip(brushes, got, expected, strict=True):
        assert brush["value"]["brushlabels"] == [label]
        assert (mask == want).mean() >= 0.995


def test_a_personal_access_token_fetches_the_images_too(studio, project, predictor):
    """Label Studio 1.23 disables legacy tokens in new organizations: its personal access tokens (JWT refresh
    tokens) are exchanged for an access token and sent as Bearer."""
    url, session = studio
    created = session.post(f"{url}/api/token/", timeout=60)
    assert created.status_code == 201, created.text
    personal = created.json()["token"]
    assert personal.count(".") == 2
    task = session.get(f"{url}/api/tasks/{project['task']}", timeout=60).json()
    context = {"result": [region("keypointlabels", {"x": 50.0, "y": 50.0, "width": 0.6, "keypointlabels": ["Cat"]})]}
    body = {"tasks": [task], "label_config": LABEL_CONFIG, "params": {"context": context}}
    with vit_t_app(label_studio_url=url, label_studio_api_key=personal) as app:
        answer = app.test_client().post("/label-studio/predict", json=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["results"][0]["result"][0]["type"] == "brushlabels"
    with vit_t_app(label_studio_url=url, label_studio_api_key=personal[:-4] + "AAAA") as app:
        refused = app.test_client().post("/label-studio/predict", json=body)
    assert refused.status_code == 502 and refused.get_json()["error"] == "label_studio_token"
