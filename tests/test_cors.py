"""Cross-origin headers (backend/server/cors.py) through Flask's test client: CORS only for the listed origins, never
with credentials, preflights, CORP relaxed only on the embeddable paths, the app's own page unchanged."""

import hashlib

import pytest
import torch
from backend_fixtures import FakeEncoder, distinct_image, image_bytes

from backend.config import Config, ConfigError
from backend.server.app import create_app
from backend.services.weights import WeightsInfo

HOST = "http://127.0.0.1:8123"
OTHER = "http://127.0.0.1:8124"
WEIGHTS = WeightsInfo("vit_t", "real", "vit_t-cors-test", None, "fake model for header tests")


def make_app(tmp_path, **settings):
    decoder_file = tmp_path / "fake.onnx"
    decoder_file.write_bytes(b"not really onnx")
    config = {
        "model": torch.nn.Linear(1, 1),  # Never runs: encode_batch replaces the forward pass.
        "weights_info": WEIGHTS,
        "encode_batch": FakeEncoder(),
        "decoders": [
            {
                "name": "lowres",
                "path": decoder_file,
                "bytes": 15,
                "sha256": hashlib.sha256(b"not really onnx").hexdigest(),
                "interface": "lowres",
                "quantized": False,
            }
        ],
        "data_dir": str(tmp_path / "data"),
        "device": "cpu",
        "secret": "test-secret",
        "TESTING": True,
    }
    config.update(settings)
    return create_app(config).test_client()


@pytest.fixture
def client(tmp_path):
    client = make_app(tmp_path, cors_origins=HOST)
    yield client
    client.application.extensions["sam"].encoder.close()


@pytest.fixture
def closed_client(tmp_path):
    client = make_app(tmp_path)
    yield client
    client.application.extensions["sam"].encoder.close()


EMBEDDABLE = [
    "/api/model",
    "/embed/sam-segmenter.js",
    "/js/api.js",
    "/models/lowres.onnx",
    "/vendor/ort/ort.wasm.min.mjs",
]


@pytest.mark.parametrize("path", EMBEDDABLE)
def test_listed_origin_may_read_embeddable_resources(client, path):
    response = client.get(path, headers={"Origin": HOST})
    assert response.status_code == 200, response.data[:200]
    assert response.headers["Access-Control-Allow-Origin"] == HOST
    assert response.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert "Origin" in response.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in response.headers


@pytest.mark.parametrize("path", EMBEDDABLE)
def test_other_origins_get_no_cors_header(client, path):
    response = client.get(path, headers={"Origin": OTHER})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Origin" in response.headers["Vary"]  # A cache must not hand this answer to the listed origin.


def test_the_apps_own_page_is_unchanged(client, closed_client):
    for c in (client, closed_client):
        for path in ("/", "/index.html", "/healthz"):
            response = c.get(path, headers={"Origin": HOST})
            assert response.status_code == 200
            assert response.headers["Cross-Origin-Resource-Policy"] == "same-origin"
            assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
            assert "Access-Control-Allow-Origin" not in response.headers


def test_without_settings_nothing_is_shared_cross_origin(closed_client):
    for path in EMBEDDABLE:
        response = closed_client.get(path, headers={"Origin": HOST})
        assert "Access-Control-Allow-Origin" not in response.headers
        assert response.headers["Cross-Origin-Resource-Policy"] == "same-origin"
    preflight = closed_client.options("/api/images", headers={"Origin": HOST, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 403
    assert preflight.get_json()["error"] == "origin_not_allowed"
    assert "SAM_CORS_ORIGINS" in preflight.get_json()["message"]


def test_preflight_for_a_listed_origin(client):
    response = client.options(
        "/api/images",
        headers={
            "Origin": HOST,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == HOST
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in response.headers
    local = client.options(
        "/api/model",
        headers={
            "Origin": HOST,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Private-Network": "true",
        },
    )
    assert local.status_code == 204 and local.headers["Access-Control-Allow-Private-Network"] == "true"
    refused = client.options("/api/images", headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"})
    assert refused.status_code == 403
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_upload_and_embedding_cross_origin_expose_the_progress_headers(client):
    upload = client.post(
        "/api/images", data=image_bytes(distinct_image(1)), content_type="image/png", headers={"Origin": HOST}
    )
    assert upload.status_code == 200
    assert upload.headers["Access-Control-Allow-Origin"] == HOST
    embedding = client.get(upload.get_json()["embedding_url"], headers={"Origin": HOST})
    assert embedding.status_code == 200
    exposed = embedding.headers["Access-Control-Expose-Headers"]
    assert "X-Uncompressed-Length" in exposed and "Content-Length" in exposed


def test_a_page_of_another_origin_can_resume_the_decoder_model(client):
    """What web/js/decoder/resumable-download.js does after a dropped transfer, from an embedding page."""
    whole = client.get("/models/lowres.onnx", headers={"Origin": HOST})
    exposed = whole.headers["Access-Control-Expose-Headers"]
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert "Accept-Ranges" in exposed and "ETag" in exposed
    preflight = client.options(
        "/models/lowres.onnx",
        headers={
            "Origin": HOST,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "if-range,range",
        },
    )
    assert preflight.status_code == 204
    allowed = preflight.headers["Access-Control-Allow-Headers"]
    assert "Range" in allowed and "If-Range" in allowed
    rest = client.get(
        "/models/lowres.onnx", headers={"Origin": HOST, "Range": "bytes=4-", "If-Range": whole.headers["ETag"]}
    )
    assert rest.status_code == 206
    assert rest.data == b"really onnx"
    assert rest.headers["Content-Range"] == "bytes 4-14/15"
    assert "Content-Range" in rest.headers["Access-Control-Expose-Headers"]
    # A file that changed since the first part (another ETag): the whole file, not a part of the new one.
    changed = client.get("/models/lowres.onnx", headers={"Origin": HOST, "Range": "bytes=4-", "If-Range": '"other"'})
    assert changed.status_code == 200 and changed.data == b"not really onnx"


def test_errors_cross_origin_are_readable(client):
    response = client.post("/api/images", data=b"<html>", content_type="text/html", headers={"Origin": HOST})
    assert response.status_code in (400, 415)
    assert response.headers["Access-Control-Allow-Origin"] == HOST
    assert response.get_json()["error"]


def test_any_origin(tmp_path):
    client = make_app(tmp_path, cors_origins="*")
    try:
        response = client.get("/api/model", headers={"Origin": OTHER})
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers
    finally:
        client.application.extensions["sam"].encoder.close()


def test_embed_page_framing_and_origins(tmp_path, closed_client):
    client = make_app(tmp_path, embed_origins=f"{HOST}, {OTHER}")
    try:
        assert client.get("/embed/?image=a.png").headers["Location"].endswith("/embed?image=a.png")
        for path in ("/embed",):
            page = client.get(path)
            assert page.status_code == 200 and b"sam-segmenter" in page.data
            assert page.headers["Content-Security-Policy"] == f"frame-ancestors 'self' {HOST} {OTHER}"
            assert page.headers["Cross-Origin-Resource-Policy"] == "cross-origin"
            assert page.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert client.get("/embed/origins.json").get_json() == {"embed_origins": [HOST, OTHER]}
    finally:
        client.application.extensions["sam"].encoder.close()
    closed = closed_client.get("/embed")
    assert closed.headers["Content-Security-Policy"] == "frame-ancestors 'self'"
    assert closed.headers["Cross-Origin-Resource-Policy"] == "same-origin"
    assert closed_client.get("/embed/origins.json").get_json() == {"embed_origins": []}


@pytest.mark.parametrize(
    "value", ["http://a.org/", "a.org", "http://a.org/path", "ftp://a.org", "*, http://a.org", "http://a.org:99999999"]
)
def test_malformed_origin_lists_are_refused(value):
    with pytest.raises(ConfigError, match="SAM_CORS_ORIGINS"):
        Config.from_env({}, {"cors_origins": value})


def test_origin_lists_parse():
    config = Config.from_env(
        {"SAM_CORS_ORIGINS": "https://Tool.example.org, http://127.0.0.1:8000", "SAM_EMBED_ORIGINS": "*"}
    )
    assert config.cors_origin_list == ("https://tool.example.org", "http://127.0.0.1:8000")
    assert config.embed_origin_list == ("*",)
    assert Config.from_env({}).cors_origin_list == ()
