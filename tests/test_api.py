"""The HTTP API through Flask's test client: uploads, embeddings on the wire, model info, static files, and
every kind of bad input answered with JSON and the right status."""

import hashlib
import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from backend_fixtures import (
    VIT_T_WEIGHTS,
    WIDE_PHOTO,
    FakeEncoder,
    distinct_image,
    image_bytes,
    model_embedding,
    photo_jpeg,
    read_rgb,
    vit_t_app,
    vit_t_model,
)
from PIL import Image

from backend.server.app import create_app
from backend.services import codec


@pytest.fixture(scope="module")
def real_app():
    """The real vit_t (seeded random weights), decoders really exported (cached in the session data dir)."""
    with vit_t_app() as app:
        yield app


@pytest.fixture(scope="module")
def truck_jpeg():
    """A 1800x1200 JPEG photo (scikit-image's coffee, enlarged)."""
    return photo_jpeg(*WIDE_PHOTO).read_bytes()


@pytest.fixture(scope="module")
def truck_upload(real_app, truck_jpeg):
    response = real_app.test_client().post("/api/images", data=truck_jpeg, content_type="image/jpeg")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def fake_app(tmp_path, fake=None, **settings):
    tmp_path.mkdir(parents=True, exist_ok=True)
    decoder_file = tmp_path / "fake.onnx"
    decoder_file.write_bytes(b"not really onnx")
    digest = hashlib.sha256(decoder_file.read_bytes()).hexdigest()
    config = {
        "model": torch.nn.Linear(1, 1),  # Never runs: encode_batch replaces the forward pass.
        "weights_info": VIT_T_WEIGHTS,
        "encode_batch": fake or FakeEncoder(),
        "decoders": [
            {
                "name": "lowres",
                "path": decoder_file,
                "bytes": 15,
                "sha256": digest,
                "interface": "lowres",
                "quantized": False,
            }
        ],
        "data_dir": str(tmp_path / "data"),
        "device": "cpu",
        "TESTING": True,
    }
    config.update(settings)
    return create_app(config)


def assert_json_error(response, status, code=None):
    assert response.status_code == status, response.data[:300]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "message"} and body["message"]
    if code:
        assert body["error"] == code, body
    return body


# Uploads and embeddings with the real model ----------------------------------------------------------------


def test_upload_answers_id_sizes_and_embedding_details(truck_upload):
    body = truck_upload
    assert len(body["id"]) == 32 and int(body["id"], 16) >= 0
    assert (body["width"], body["height"], body["input_size"]) == (1800, 1200, [683, 1024])
    assert (body["model_type"], body["weights"], body["format"], body["dtype"]) == ("vit_t", "real", "int8", "int8")
    assert body["shape"] == [256, 64, 64] and body["bytes"] == 256 * 64 * 64 + 4 * 256 + 16
    assert body["embedding_url"] == f"/api/embeddings/{body['id']}?format=int8"
    assert body["cache_hit"] is False and body["encode_ms"] > 0


def test_reupload_as_multipart_is_a_cache_hit_without_encoding(real_app, truck_upload, truck_jpeg):
    encoder = real_app.extensions["sam"].encoder
    response = real_app.test_client().post(
        "/api/images",
        data={"image": (io.BytesIO(truck_jpeg), "truck.jpg", "image/jpeg")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 200
    assert response.get_json()["id"] == truck_upload["id"]
    assert response.get_json()["cache_hit"] is True
    assert encoder.images_encoded == 1


def test_embedding_bytes_decode_to_the_models_own_embedding(real_app, truck_upload):
    expected = model_embedding(vit_t_model(), read_rgb(photo_jpeg(*WIDE_PHOTO)))
    client = real_app.test_client()
    tolerances = {"f32": 1e-3, "f16": 2e-3, "int8": None}
    for fmt, tolerance in tolerances.items():
        response = client.get(f"/api/embeddings/{truck_upload['id']}?format={fmt}")
        assert response.status_code == 200 and response.mimetype == "application/octet-stream"
        assert int(response.headers["Content-Length"]) == len(response.data) == codec.encoded_size((256, 64, 64), fmt)
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        etag = response.headers["ETag"]
        assert etag.startswith('"') and not etag.startswith("W/")
        decoded = codec.decode_embedding(response.data)
        if tolerance is None:  # int8: within half a quantisation step of the model's, per channel.
            steps = np.abs(expected).reshape(256, -1).max(axis=1)[:, None, None] / 127
            assert (np.abs(decoded - expected) <= steps / 2 + 1e-3).all()
            assert len(response.data) <= 1_100_000
        else:
            assert np.abs(decoded - expected).max() <= tolerance
        assert client.get(response.request.full_path, headers={"If-None-Match": etag}).status_code == 304


def test_embedding_gzip_only_when_it_shrinks_and_then_it_is_a_different_etag(real_app, truck_upload):
    client = real_app.test_client()
    plain = client.get(f"/api/embeddings/{truck_upload['id']}?format=int8")
    packed = client.get(f"/api/embeddings/{truck_upload['id']}?format=int8", headers={"Accept-Encoding": "gzip, br"})
    if packed.headers.get("Content-Encoding") == "gzip":
        import gzip

        assert len(packed.data) <= 0.9 * len(plain.data)
        assert gzip.decompress(packed.data) == plain.data
        assert packed.headers["ETag"] != plain.headers["ETag"]
    else:
        assert packed.data == plain.data and packed.headers["ETag"] == plain.headers["ETag"]
    assert packed.headers["X-Uncompressed-Length"] == str(len(plain.data))
    assert "Accept-Encoding" in packed.headers["Vary"]


@pytest.mark.parametrize(
    "path, status, code",
    [
        ("/api/embeddings/" + "0" * 32, 404, "unknown_id"),
        ("/api/embeddings/not-an-id", 400, "malformed_id"),
        ("/api/embeddings/..%2F..%2Fetc%2Fpasswd", 404, None),
        ("/api/embeddings/..%5C..%5Cetc%5Cpasswd", 400, "malformed_id"),
        ("/api/embeddings/../../etc/passwd", 404, None),
        ("/api/embeddings/" + "A" * 32, 400, "malformed_id"),
    ],
)
def test_unknown_or_malformed_ids(real_app, path, status, code):
    assert_json_error(real_app.test_client().get(path), status, code)


def test_unknown_embedding_format_is_400(real_app, truck_upload):
    body = assert_json_error(
        real_app.test_client().get(f"/api/embeddings/{truck_upload['id']}?format=bf16"), 400, "unknown_format"
    )
    assert "f16" in body["message"]


def test_model_info_lists_downloadable_decoders(real_app):
    client = real_app.test_client()
    info = client.get("/api/model").get_json()
    assert (info["model_type"], info["weights"], info["image_size"], info["mask_threshold"]) == (
        "vit_t",
        "real",
        1024,
        0.0,
    )
    assert info["weights_message"]
    assert info["decoder_error"] is None
    names = [d["name"] for d in info["decoders"]]
    assert info["default_decoder"] == "lowres-quantized" and "official" in names
    for decoder in info["decoders"]:
        response = client.get(decoder["url"])
        assert response.status_code == 200 and len(response.data) == decoder["bytes"]
        assert hashlib.sha256(response.data).hexdigest() == decoder["sha256"]
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        response.close()
    unversioned = client.get("/models/official.onnx")
    assert unversioned.headers["Cache-Control"] == "no-cache" and unversioned.headers.get("ETag")
    assert_json_error(client.get("/models/nope.onnx"), 404, "unknown_decoder")


# Bad input ---------------------------------------------------------------------------------------------------


def jpeg(pixels=None, **params):
    return image_bytes(distinct_image(3, (64, 64)) if pixels is None else pixels, "JPEG", **params)


@pytest.mark.parametrize(
    "data, content_type, status",
    [
        (b"", "image/png", 400),
        (b"hello, I am text", "image/png", 415),
        (b"<html><body><img src=x onerror=alert(1)></body></html>", "image/jpeg", 415),
        (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "image/svg+xml", 415),
        (jpeg()[:300], "image/jpeg", 400),
        (image_bytes(distinct_image(4, (64, 64)), "PNG")[:-40], "image/png", 400),
    ],
    ids=["empty", "text", "html", "svg", "truncated-jpeg", "truncated-png"],
)
def test_non_images_are_refused_and_the_server_goes_on(tmp_path, data, content_type, status):
    app = fake_app(tmp_path)
    client = app.test_client()
    assert_json_error(client.post("/api/images", data=data, content_type=content_type), status)
    assert client.post("/api/images", data=jpeg(), content_type="image/jpeg").status_code == 200


def test_body_over_the_limit_is_413_json(tmp_path):
    app = fake_app(tmp_path, max_upload_bytes=10_000)
    client = app.test_client()
    body = assert_json_error(
        client.post("/api/images", data=b"\xff" * 20_000, content_type="image/jpeg"), 413, "too_large"
    )
    assert "10,000" in body["message"]
    multipart = client.post(
        "/api/images", data={"image": (io.BytesIO(b"\xff" * 20_000), "a.jpg")}, content_type="multipart/form-data"
    )
    assert_json_error(multipart, 413)


def test_default_upload_limit_is_25_mb(tmp_path):
    assert fake_app(tmp_path).config["MAX_CONTENT_LENGTH"] == 25 * 1024 * 1024


def test_decompression_bombs_are_413(tmp_path):
    from test_images import png_claiming_size

    client = fake_app(tmp_path).test_client()
    assert_json_error(client.post("/api/images", data=png_claiming_size(20_000, 20_000)), 413, "image_too_large")
    small_limit = fake_app(tmp_path, max_pixels=1000).test_client()
    assert_json_error(small_limit.post("/api/images", data=jpeg()), 413, "image_too_large")


def test_multipart_without_image_field_is_400(tmp_path):
    client = fake_app(tmp_path).test_client()
    response = client.post(
        "/api/images", data={"file": (io.BytesIO(jpeg()), "a.jpg")}, content_type="multipart/form-data"
    )
    assert "'image'" in assert_json_error(response, 400, "missing_image")["message"]


def test_wrong_method_and_unknown_paths_are_json(tmp_path):
    client = fake_app(tmp_path).test_client()
    assert_json_error(client.get("/api/images"), 405)
    assert_json_error(client.get("/api/nothing-here"), 404)
    assert_json_error(client.get("/no/such/file.js"), 404)
    assert_json_error(client.get("/node_modules/onnxruntime-web/package.json"), 404)


def test_exif_rotated_upload_reports_the_displayed_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    body = (
        fake_app(tmp_path)
        .test_client()
        .post("/api/images", data=jpeg(distinct_image(5, (30, 50)), exif=exif.tobytes()))
        .get_json()
    )
    assert (body["width"], body["height"]) == (30, 50)


def test_uploads_are_never_written_to_disk(tmp_path, monkeypatch):
    import tempfile

    import werkzeug.formparser

    def forbidden(*args, **kwargs):
        raise AssertionError("an upload was about to be written to a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, forbidden)
    monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile", forbidden)
    app = fake_app(tmp_path)
    big = image_bytes(distinct_image(6, (700, 700)), "PNG")  # ~1.5 MB: Werkzeug would spool it to disk.
    assert len(big) > 1_000_000
    before = sorted(p for p in tmp_path.rglob("*"))
    response = app.test_client().post(
        "/api/images", data={"image": (io.BytesIO(big), "big.png")}, content_type="multipart/form-data"
    )
    assert response.status_code == 200, response.get_json()
    assert sorted(p for p in tmp_path.rglob("*")) == before


# Queue, timeouts, caching across instances ------------------------------------------------------------------


def test_full_queue_answers_503_with_retry_after(tmp_path):
    fake = FakeEncoder()
    fake.gate.clear()
    app = fake_app(tmp_path, fake, queue_size=1, batch_size=1)
    results = []

    def upload(seed):
        results.append(app.test_client().post("/api/images", data=jpeg(distinct_image(seed, (20, 20)))))

    first = threading.Thread(target=upload, args=(1,))
    first.start()
    assert fake.started.wait(5)
    second = threading.Thread(target=upload, args=(2,))
    second.start()
    deadline = time.time() + 5
    while app.extensions["sam"].encoder.queue_depth < 1 and time.time() < deadline:
        time.sleep(0.01)
    refused = app.test_client().post("/api/images", data=jpeg(distinct_image(3, (20, 20))))
    body = assert_json_error(refused, 503, "encoder_busy")
    assert int(refused.headers["Retry-After"]) >= 1 and "queue is full" in body["message"]
    fake.gate.set()
    first.join(10)
    second.join(10)
    assert [r.status_code for r in results] == [200, 200]


def test_request_timeout_answers_503(tmp_path):
    fake = FakeEncoder()
    fake.gate.clear()
    app = fake_app(tmp_path, fake, request_timeout=0.3)
    started = time.perf_counter()
    response = app.test_client().post("/api/images", data=jpeg())
    assert_json_error(response, 503, "encoder_timeout")
    assert "Retry-After" in response.headers and time.perf_counter() - started < 3
    fake.gate.set()


def test_disk_cache_and_generated_secret_are_shared_by_app_instances(tmp_path):
    first_fake, second_fake = FakeEncoder(), FakeEncoder()
    settings = {"disk_cache_dir": str(tmp_path / "embeddings")}
    first = fake_app(tmp_path, first_fake, **settings).test_client().post("/api/images", data=jpeg()).get_json()
    second_app = fake_app(tmp_path, second_fake, **settings)  # Same data dir: same generated secret.
    second = second_app.test_client().post("/api/images", data=jpeg()).get_json()
    assert first["id"] == second["id"] and second["cache_hit"] is True and second_fake.batches == []
    assert (tmp_path / "data" / "secret.key").stat().st_mode & 0o077 == 0
    other_secret = fake_app(tmp_path / "other").test_client().post("/api/images", data=jpeg()).get_json()
    assert other_secret["id"] != first["id"]


# Static files, headers, gallery, health --------------------------------------------------------------------


def test_page_and_onnxruntime_files_are_cross_origin_isolated_with_right_types(tmp_path):
    app = fake_app(tmp_path)
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    version = app.extensions["sam"].ort_version
    assert version
    for path, mimetype in [
        ("/", "text/html"),
        ("/vendor/ort/ort-wasm-simd-threaded.wasm", "application/wasm"),
        ("/vendor/ort/ort-wasm-simd-threaded.mjs", "text/javascript"),
        ("/vendor/ort/ort.min.js", "text/javascript"),
    ]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.mimetype == mimetype, path
        assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        response.close()
    versioned = client.get(f"/vendor/ort@{version}/ort-wasm-simd-threaded.wasm")
    assert versioned.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert client.get("/vendor/ort/ort.min.js").headers["Cache-Control"] == "no-cache"
    assert_json_error(client.get("/vendor/ort@0.0.1/ort.min.js"), 404)
    assert_json_error(client.get("/vendor/ort/../../package.json"), 404)


def test_gallery_lists_licensed_samples_and_the_deployment_folder(tmp_path):
    folder = tmp_path / "gallery"
    folder.mkdir()
    (folder / "street.jpg").write_bytes(jpeg(distinct_image(8, (40, 60))))
    (folder / "notes.txt").write_text("not an image")
    (folder / "gallery.json").write_text(json.dumps({"street.jpg": {"license": "CC-BY-4.0", "source": "me"}}))
    client = fake_app(tmp_path, gallery_dir=str(folder)).test_client()
    listing = client.get("/api/gallery").get_json()
    by_name = {item["name"]: item for item in listing}
    assert {"astronaut.png", "coffee.png", "chelsea.png"} <= set(by_name)
    assert by_name["astronaut.png"]["license"] == "Public domain" and "NASA" in by_name["astronaut.png"]["source"]
    assert by_name["coffee.png"]["license"] == "CC0"
    assert by_name["street.jpg"] == {
        "name": "street.jpg",
        "url": "/gallery/street.jpg",  # a small JPEG is opened as it is
        "original": "/gallery/street.jpg",
        "thumbnail": "/gallery/street.jpg/thumbnail.jpg",
        "width": 60,
        "height": 40,
        "license": "CC-BY-4.0",
        "source": "me",
    }
    assert "notes.txt" not in by_name
    for item in listing:
        for key in ("url", "original"):
            response = client.get(item[key])
            assert response.status_code == 200
            assert Image.open(io.BytesIO(response.data)).size == (item["width"], item["height"])
        thumbnail = client.get(item["thumbnail"])
        assert thumbnail.status_code == 200 and thumbnail.mimetype == "image/jpeg"
        assert "max-age" in thumbnail.headers["Cache-Control"] and thumbnail.headers["ETag"]
        assert client.get(item["thumbnail"], headers={"If-None-Match": thumbnail.headers["ETag"]}).status_code == 304
        # Covers the page's 120x80 tile at 2x density, never larger than needed (nor than the original).
        width, height = Image.open(io.BytesIO(thumbnail.data)).size
        assert (width >= min(240, item["width"]) and height >= min(160, item["height"])) and min(
            width / 240, height / 160
        ) <= 1.01
        assert len(thumbnail.data) < 20_000
    # The bundled PNG photos open as JPEG web copies of the same size, a fraction of the original's bytes.
    astronaut = by_name["astronaut.png"]
    assert astronaut["url"] == "/gallery/astronaut.png/web.jpg" and astronaut["original"] == "/gallery/astronaut.png"
    web, original = client.get(astronaut["url"]), client.get(astronaut["original"])
    assert web.mimetype == "image/jpeg" and len(web.data) * 5 < len(original.data)
    web_pixels = np.asarray(Image.open(io.BytesIO(web.data)).convert("RGB"), dtype=np.float64)
    original_pixels = np.asarray(Image.open(io.BytesIO(original.data)).convert("RGB"), dtype=np.float64)
    assert np.abs(web_pixels - original_pixels).mean() < 3  # quality 90, no chroma subsampling
    assert_json_error(client.get("/gallery/street.jpg/web.jpg"), 404)  # small JPEGs have no web copy
    assert_json_error(client.get("/gallery/street.jpg/poster.jpg"), 404)
    assert_json_error(client.get("/gallery/nothing.png/thumbnail.jpg"), 404)
    assert_json_error(client.get("/gallery/notes.txt"), 404)
    assert_json_error(client.get("/gallery/..%2Fgallery.json"), 404)


def test_healthz_reports_ok_and_encoder_state(tmp_path):
    body = fake_app(tmp_path).test_client().get("/healthz").get_json()
    assert body["status"] == "ok" and body["encoder"]["queue_depth"] == 0 and body["model_type"] == "vit_t"


def test_static_files_are_gzipped_only_when_it_pays(tmp_path):
    import gzip

    from backend.server.static import ORT_DIST_DIR

    client = fake_app(tmp_path).test_client()
    raw = (ORT_DIST_DIR / "ort-wasm-simd-threaded.wasm").read_bytes()
    packed = client.get("/vendor/ort/ort-wasm-simd-threaded.wasm", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert packed.status_code == 200 and packed.headers["Content-Encoding"] == "gzip"
    assert packed.mimetype == "application/wasm" and packed.headers["Vary"] == "Accept-Encoding"
    assert int(packed.headers["Content-Length"]) == len(packed.data) <= 0.5 * len(raw)
    assert gzip.decompress(packed.data) == raw
    again = client.get(
        "/vendor/ort/ort-wasm-simd-threaded.wasm",
        headers={"Accept-Encoding": "gzip", "If-None-Match": packed.headers["ETag"]},
    )
    assert again.status_code == 304
    plain = client.get("/vendor/ort/ort-wasm-simd-threaded.wasm")
    assert (
        "Content-Encoding" not in plain.headers
        and plain.data == raw
        and plain.headers["ETag"] != packed.headers["ETag"]
    )
    plain.close()
    # Content gzip would not shrink by 10% (random bytes) is sent as it is.
    from backend.server.compression import StaticGzip as _StaticGzip

    noise = tmp_path / "noise.js"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    assert _StaticGzip(max_bytes=10**7).get(str(noise), noise.stat()) is None


def test_configuration_from_environment_with_clear_errors():
    from backend.config import Config, ConfigError

    config = Config.from_env(
        {
            "SAM_QUEUE_SIZE": "3",
            "SAM_ALLOW_DOWNLOAD": "no",
            "SAM_REQUEST_TIMEOUT": "2.5",
            "PORT": "8080",
            "SAM_DECODER": "",
        },
        {"SAM_BATCH_SIZE": 2, "cache_bytes": "1000", "TESTING": True},
    )
    assert (config.queue_size, config.allow_download, config.request_timeout, config.port) == (3, False, 2.5, 8080)
    assert (config.batch_size, config.cache_bytes, config.decoder) == (2, 1000, "lowres-quantized")
    for environ, variable in [
        ({"SAM_QUEUE_SIZE": "lots"}, "SAM_QUEUE_SIZE"),
        ({"SAM_QUEUE_SIZE": "0"}, "SAM_QUEUE_SIZE"),
        ({"SAM_ALLOW_DOWNLOAD": "perhaps"}, "SAM_ALLOW_DOWNLOAD"),
        ({"SAM_MODEL_TYPE": "vit_xxl"}, "SAM_MODEL_TYPE"),
        ({"SAM_DEVICE": "tpu"}, "SAM_DEVICE"),
        ({"SAM_DECODER": "fastest"}, "SAM_DECODER"),
    ]:
        with pytest.raises(ConfigError, match=variable):
            Config.from_env(environ)
