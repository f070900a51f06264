"""The annotation tools' protocols (backend/integrations/) through Flask's test client: CVAT's nuclio contract and
its embedding run through a stock ONNX decoder, Label Studio's ML backend against a stand-in image host (the
real Label Studio drives it in tests/test_label_studio.py), Roboflow's SAM 2 routes, and hostile input on every
route answered with 4xx JSON."""

from __future__ import annotations

import base64
import contextlib
import http.server
import threading
import time

import numpy as np
import onnxruntime as ort
import pytest
from backend_fixtures import SMALL_PHOTO, photo_jpeg, read_rgb, vit_t_app, vit_t_model

from backend.integrations.cvat import FUNCTION_ID
from backend.integrations.roboflow import mask_polygons
from backend.integrations.toolkit import EXTENSION as TOOLKIT
from backend.sam import SamPredictor

TOKEN = "ls-test-token"
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="cat" smart="true"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="cat" smart="true"/></RectangleLabels>
</View>"""


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return photo_jpeg(*SMALL_PHOTO).read_bytes()


@pytest.fixture(scope="module")
def pixels():
    return read_rgb(photo_jpeg(*SMALL_PHOTO))


class _ImageHost(http.server.BaseHTTPRequestHandler):
    """Serves one image at /data/upload/1/photo.jpg to requests carrying the token, like Label Studio; a redirect
    to another origin at /data/away.jpg; a within-origin redirect at /data/alias.jpg."""

    image = b""
    away = ""

    def do_GET(self):
        if self.headers.get("Authorization") != f"Token {TOKEN}":
            self.send_response(401)
            self.end_headers()
        elif self.path == "/data/upload/1/photo.jpg":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image)
        elif self.path in ("/data/away.jpg", "/data/alias.jpg"):
            self.send_response(302)
            self.send_header("Location", self.away if self.path == "/data/away.jpg" else "/data/upload/1/photo.jpg")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def image_host(image: bytes):
    handler = type("Host", (_ImageHost,), {"image": image, "away": "http://127.0.0.2:9/photo.jpg"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def host(jpeg):
    with image_host(jpeg) as url:
        yield url


@pytest.fixture(scope="module")
def app(host):
    with vit_t_app(cvat=True, roboflow=True, label_studio_url=host, label_studio_api_key=TOKEN) as app:
        yield app


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def predictor(pixels):
    """``SamPredictor`` on the same model, the photo encoded once: the masks every route must answer."""
    predictor = SamPredictor(vit_t_model())
    predictor.set_image(pixels)
    return predictor


def expected_mask(predictor, **prompt):
    """The predictor's best mask for a prompt (and its score)."""
    masks, scores, _ = predictor.predict(multimask_output=prompt.pop("multimask", False), **prompt)
    return masks[int(np.argmax(scores))], float(scores.max())


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


def assert_json_error(response, status: int, code: str | None = None):
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert set(body) >= {"error", "message"} and body["message"], body
    if code is not None:
        assert body["error"] == code, body


# --- CVAT ---------------------------------------------------------------------------------------------------


def test_cvat_lists_the_sam_interactor_as_nuclio_does(client):
    listing = client.get("/api/functions").get_json()
    assert list(listing) == [FUNCTION_ID]
    info = client.get(f"/api/functions/{FUNCTION_ID}").get_json()
    assert info == listing[FUNCTION_ID]
    # The fields CVAT's lambda manager reads (LambdaFunction.__init__), as its SAM function.yaml sets them.
    assert info["metadata"]["name"] == FUNCTION_ID
    annotations = info["metadata"]["annotations"]
    assert annotations["type"] == "interactor"
    assert annotations["name"] == "Segment Anything"
    assert int(annotations["version"]) == 2
    assert int(annotations["min_pos_points"]) == 0 and int(annotations["min_neg_points"]) == 0
    assert annotations["startswith_box_optional"] == "true"
    assert annotations["spec"] in ("", "[]")
    assert isinstance(info["spec"]["description"], str) and info["spec"]["description"]
    assert "httpPort" in info["status"]


def test_cvat_blob_is_the_pages_embedding_and_the_stock_decoder_gives_the_pages_mask(
    app, client, jpeg, pixels, predictor
):
    body = {"image": base64.b64encode(jpeg).decode(), "pos_points": [[400, 260]], "neg_points": [], "obj_bbox": None}
    response = client.post("/api/function_invocations", json=body, headers={"x-nuclio-function-name": FUNCTION_ID})
    assert response.status_code == 200, response.get_data(as_text=True)
    blob = np.frombuffer(base64.b64decode(response.get_json()["blob"]), dtype="<f4")
    assert blob.size == 256 * 64 * 64
    embedding = blob.reshape(1, 256, 64, 64)

    # The page uploads the same image: the same cache entry, byte for byte.
    page = client.post("/api/images", data=jpeg, content_type="image/jpeg").get_json()
    assert page["cache_hit"] is True
    np.testing.assert_array_equal(embedding[0], app.extensions["sam"].encoder.embedding(page["id"]).embedding)

    # CVAT's plug-in runs Meta's ONNX interface on the blob: here our official export (the interface it bundles).
    official = next(d for d in app.extensions["sam"].decoders.decoders if d["name"] == "official")
    session = ort.InferenceSession(str(official["path"]), providers=["CPUExecutionProvider"])
    h, w = pixels.shape[:2]
    scale = 1024 / max(h, w)
    masks, scores, _ = session.run(
        None,
        {
            "image_embeddings": embedding,
            "point_coords": np.array([[[400 * scale, 260 * scale], [0, 0]]], np.float32),
            "point_labels": np.array([[1, -1]], np.float32),
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([h, w], np.float32),
        },
    )
    best = 1 + int(np.argmax(scores[0, 1:]))  # the multimask candidates, as for one click
    expected, _ = expected_mask(
        predictor, point_coords=np.array([[400, 260]]), point_labels=np.array([1]), multimask=True
    )
    assert 0.0 < expected.mean() < 1.0
    assert agreement(masks[0, best] > 0, expected) >= 0.995


@pytest.mark.parametrize(
    "headers, body, status, code",
    [
        ({}, {"image": "aGVsbG8="}, 404, "unknown_function"),
        ({"x-nuclio-function-name": "other"}, {"image": "aGVsbG8="}, 404, "unknown_function"),
        ({"x-nuclio-function-name": FUNCTION_ID}, {"image": "not base64!!"}, 400, "bad_base64"),
        ({"x-nuclio-function-name": FUNCTION_ID}, {"image": ""}, 400, "missing_image"),
        ({"x-nuclio-function-name": FUNCTION_ID}, {"image": "aGVsbG8="}, 415, "unsupported_image"),
        ({"x-nuclio-function-name": FUNCTION_ID}, {"image": "aGk=", "pos_points": [[1]]}, 400, "malformed_points"),
        ({"x-nuclio-function-name": FUNCTION_ID}, {"image": "aGk=", "pos_points": "x"}, 400, "malformed_points"),
        ({"x-nuclio-function-name": FUNCTION_ID}, {"image": "aGk=", "obj_bbox": [1, 2]}, 400, "malformed_box"),
        ({"x-nuclio-function-name": FUNCTION_ID}, [1, 2], 400, "malformed_request"),
    ],
)
def test_cvat_hostile_invocations_get_4xx_json(client, headers, body, status, code):
    assert_json_error(client.post("/api/function_invocations", json=body, headers=headers), status, code)


def test_cvat_unknown_function_and_non_json_body(client):
    assert_json_error(client.get("/api/functions/nope"), 404, "unknown_function")
    response = client.post(
        "/api/function_invocations",
        data=b"\xff\x00",
        content_type="application/json",
        headers={"x-nuclio-function-name": FUNCTION_ID},
    )
    assert_json_error(response, 400, "malformed_request")


def test_cvat_is_off_unless_enabled(host):
    with vit_t_app() as plain:
        assert_json_error(plain.test_client().get("/api/functions"), 404)
        # Without SAM_ROBOFLOW the path belongs to the static files, which take only GET.
        assert_json_error(plain.test_client().post("/sam2/segment_image", json={}), 405)


# --- oversized bodies on every route that takes an image -----------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/function_invocations", "/sam2/embed_image", "/sam2/segment_image", "/label-studio/predict"]
)
def test_a_100_mb_body_is_refused_with_json(client, path):
    huge = b'{"image": "' + b"A" * (100 * 1024 * 1024) + b'"}'
    response = client.post(
        path, data=huge, content_type="application/json", headers={"x-nuclio-function-name": FUNCTION_ID}
    )
    assert_json_error(response, 413)


# --- Label Studio (stand-in image host) ---------------------------------------------------------------------


def ls_request(context=None, image="/data/upload/1/photo.jpg", label_config=LABEL_CONFIG):
    return {
        "tasks": [{"id": 1, "data": {"image": image}}],
        "project": "1.1700000000",
        "label_config": label_config,
        "params": {"login": None, "password": None, "context": context},
    }


def keypoint(x, y, positive=True, label="cat"):
    return {
        "original_width": 800,
        "original_height": 534,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
        "is_positive": positive,
        "id": "kp1",
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
    }


def test_label_studio_health_and_setup_answer_at_once_while_the_encoder_is_busy(client, app, jpeg):
    gate, inside = threading.Event(), threading.Event()
    encoder = app.extensions["sam"].encoder
    real_encode = encoder.encode

    def stuck_encode(*args, **kwargs):
        inside.set()
        gate.wait(30)
        return real_encode(*args, **kwargs)

    encoder.encode = stuck_encode
    busy = threading.Thread(target=lambda: app.test_client().post("/api/images", data=jpeg, content_type="image/jpeg"))
    try:
        busy.start()
        assert inside.wait(30), "the upload never reached the encoder"
        for path, method, limit in (("/label-studio/health", "get", 1.0), ("/label-studio/setup", "post", 3.0)):
            started = time.perf_counter()
            response = getattr(client, method)(path, json={"project": "1.1", "schema": LABEL_CONFIG})
            assert response.status_code == 200 and time.perf_counter() - started < limit / 4
            assert busy.is_alive()  # still held in the encoder meanwhile
        assert client.get("/label-studio/health").get_json()["status"] == "UP"
        assert client.post("/label-studio/setup", json={}).get_json()["model_version"].startswith("segment-anything-")
    finally:
        gate.set()
        busy.join()
        encoder.encode = real_encode


def test_label_studio_interactive_keypoints_and_box_become_the_predictors_brush_mask(client, predictor):
    from label_studio_converter.brush import decode_rle

    rectangle = {
        **keypoint(0, 0),
        "type": "rectanglelabels",
        "from_name": "rect",
        "value": {"x": 25.0, "y": 20.0, "width": 40.0, "height": 50.0, "rectanglelabels": ["cat"]},
    }
    context = {"result": [keypoint(50.0, 48.7), keypoint(30.0, 30.0, positive=False), rectangle]}
    response = client.post("/label-studio/predict", json=ls_request(context))
    assert response.status_code == 200, response.get_data(as_text=True)
    [prediction] = response.get_json()["results"]
    [region] = prediction["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "tag" and region["to_name"] == "image"
    assert region["value"]["brushlabels"] == ["cat"] and region["value"]["format"] == "rle"
    assert (region["original_width"], region["original_height"]) == (800, 534)
    got = decode_rle(region["value"]["rle"]).reshape(534, 800, 4)[:, :, 3] > 0

    expected, score = expected_mask(
        predictor,
        point_coords=np.array([[400.0, 534 * 0.487], [240.0, 534 * 0.3]]),
        point_labels=np.array([1, 0]),
        box=np.array([200.0, 534 * 0.2, 520.0, 534 * 0.7]),
    )
    assert 0.0 < expected.mean() < 1.0
    assert agreement(got, expected) >= 0.995
    assert region["score"] == pytest.approx(score, abs=1e-4) and prediction["score"] == pytest.approx(score, abs=1e-4)


def test_label_studio_follows_redirects_only_within_its_origin(client):
    response = client.post("/label-studio/predict", json=ls_request({"result": [keypoint(50, 50)]}, "/data/alias.jpg"))
    assert response.status_code == 200
    assert_json_error(
        client.post("/label-studio/predict", json=ls_request({"result": [keypoint(50, 50)]}, "/data/away.jpg")),
        502,
        "redirect_outside_origin",
    )


def test_label_studio_without_grounding_answers_a_clear_empty_result(client, monkeypatch):
    # A server without the .[text] extra has no grounder (with it, the text service's detector grounds labels).
    monkeypatch.setattr(client.application.extensions[TOOLKIT], "grounder", None)
    body = client.post("/label-studio/predict", json=ls_request(None)).get_json()
    assert body["results"] == [] and "text grounding" in body["message"]


@pytest.mark.parametrize(
    "change, status, code",
    [
        (lambda b: b.update(tasks=[]), 400, "malformed_tasks"),
        (lambda b: b.update(tasks="x"), 400, "malformed_tasks"),
        (lambda b: b.update(label_config="<View><Image"), 400, "malformed_label_config"),
        (lambda b: b.update(label_config="<View><Image name='i' value='$image'/></View>"), 400, "no_brush_labels"),
        (lambda b: b["params"].update(context={"result": "x"}), 400, "malformed_context"),
        (lambda b: b["params"].update(context={"result": [{"type": "keypointlabels"}]}), 400, "malformed_context"),
        (lambda b: b["params"]["context"]["result"][0]["value"].update(x="50"), 400, "malformed_context"),
        (lambda b: b["params"]["context"]["result"][0]["value"].update(x=1e9), 400, "malformed_context"),
        (lambda b: b["params"]["context"]["result"][0].update(type="polygonlabels"), 400, "unsupported_region"),
        (lambda b: b["params"]["context"].update(result=[keypoint(1, 1)] * 65), 413, "too_many_regions"),
        (lambda b: b["tasks"][0]["data"].update(image="http://127.0.0.2:9/x.jpg"), 400, "image_outside_origin"),
        (lambda b: b["tasks"][0]["data"].update(image="//evil.example/x.jpg"), 400, "image_outside_origin"),
        (lambda b: b["tasks"][0]["data"].update(image="file:///etc/passwd"), 400, "image_outside_origin"),
        (lambda b: b["tasks"][0]["data"].update(image=None), 400, "missing_image"),
        (lambda b: b["tasks"][0]["data"].update(image="/data/missing.jpg"), 502, "label_studio_error"),
    ],
)
def test_label_studio_hostile_predictions_get_4xx_json(client, change, status, code):
    body = ls_request({"result": [keypoint(50.0, 50.0)]})
    change(body)
    assert_json_error(client.post("/label-studio/predict", json=body), status, code)


def test_label_studio_non_json_bodies(client):
    for path in ("/label-studio/predict", "/label-studio/setup"):
        assert_json_error(client.post(path, data=b"nope", content_type="application/json"), 400, "malformed_request")


def test_label_studio_basic_auth(host):
    with vit_t_app(label_studio_url=host, label_studio_basic_auth="ls:s3cret") as guarded:
        client = guarded.test_client()
        response = client.get("/label-studio/health")
        assert_json_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        wrong = base64.b64encode(b"ls:wrong").decode()
        assert_json_error(client.get("/label-studio/health", headers={"Authorization": f"Basic {wrong}"}), 401)
        right = base64.b64encode(b"ls:s3cret").decode()
        assert client.get("/label-studio/health", headers={"Authorization": f"Basic {right}"}).status_code == 200


def test_label_studio_takes_its_origin_from_setup_when_not_configured(jpeg):
    with image_host(jpeg) as url, vit_t_app() as bare:
        client = bare.test_client()
        body = ls_request({"result": [keypoint(50.0, 50.0)]})
        assert_json_error(client.post("/label-studio/predict", json=body), 409, "label_studio_unknown")
        client.post("/label-studio/setup", json={"project": "1.1", "hostname": url, "access_token": TOKEN})
        assert client.post("/label-studio/predict", json=body).status_code == 200


# --- Roboflow (the real inference-sdk client drives these in tests/test_roboflow_client.py) -----------------


def test_roboflow_polygons_outline_the_mask():
    mask = np.zeros((60, 80), bool)
    mask[10:40, 5:30] = True
    mask[20:25, 10:15] = False  # a hole: filled, as the outer outline
    mask[45:55, 50:75] = True
    polygons = mask_polygons(mask)
    assert len(polygons) == 2
    from PIL import Image, ImageDraw

    canvas = Image.new("1", (80, 60))
    for polygon in polygons:
        ImageDraw.Draw(canvas).polygon([tuple(p) for p in polygon], fill=1)
    filled = mask.copy()
    filled[20:25, 10:15] = True
    drawn = np.asarray(canvas)
    assert np.logical_and(drawn, filled).sum() / np.logical_or(drawn, filled).sum() > 0.95


@pytest.mark.parametrize(
    "path, body, status, code",
    [
        (
            "/sam2/embed_image",
            {"image": {"type": "url", "value": "http://127.0.0.1/x.jpg"}},
            400,
            "unsupported_image_type",
        ),
        ("/sam2/embed_image", {"image": {"type": "numpy", "value": "gASV"}}, 400, "unsupported_image_type"),
        ("/sam2/embed_image", {"image": {"type": "base64", "value": "%%%"}}, 400, "bad_base64"),
        ("/sam2/embed_image", {"image": "x"}, 400, "missing_image"),
        ("/sam2/segment_image", {"image": {"type": "base64", "value": "aGk="}}, 400, "missing_prompts"),
        ("/sam2/segment_image", {"prompts": {"prompts": [{}]}, "image_id": "0" * 32}, 400, "empty_prompt"),
        ("/sam2/segment_image", {"prompts": {"prompts": [{"box": {"x": 1}}]}}, 400, "malformed_box"),
        ("/sam2/segment_image", {"prompts": {"prompts": [{"points": [{"x": "a"}]}]}}, 400, "malformed_points"),
        (
            "/sam2/segment_image",
            {"prompts": {"prompts": [{"points": [{"x": 1, "y": 1}]}]}, "image_id": "../x"},
            400,
            "malformed_id",
        ),
        (
            "/sam2/segment_image",
            {"prompts": {"prompts": [{"points": [{"x": 1, "y": 1}]}]}, "image_id": "0" * 32},
            404,
            "unknown_id",
        ),
        ("/sam2/segment_image", {"format": "binary", "prompts": {"prompts": []}}, 400, "unsupported_format"),
        ("/sam2/segment_image", [], 400, "malformed_request"),
    ],
)
def test_roboflow_hostile_requests_get_4xx_json(client, path, body, status, code):
    assert_json_error(client.post(path, json=body), status, code)


def test_roboflow_segment_by_image_id_reuses_the_cached_embedding(client, jpeg, predictor):
    image = {"type": "base64", "value": base64.b64encode(jpeg).decode()}
    image_id = client.post("/sam2/embed_image", json={"image": image}).get_json()["image_id"]
    prompt = {"box": {"x": 400, "y": 267, "width": 300, "height": 200}}
    body = client.post("/sam2/segment_image", json={"image_id": image_id, "prompts": {"prompts": [prompt]}}).get_json()
    [prediction] = body["predictions"]
    expected, score = expected_mask(predictor, box=np.array([250.0, 167.0, 550.0, 367.0]))
    assert prediction["confidence"] == pytest.approx(score, abs=1e-4)
    assert prediction["masks"] == mask_polygons(expected)
