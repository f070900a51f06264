"""Shared state in a real redis-server: the stores behind the seams, 503 + Retry-After while Redis is down, recovery."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from backend_fixtures import FakeEncoder, distinct_image, image_bytes
from cluster_fixtures import RedisServer

from backend.config import ConfigError
from backend.services.cache import CachedEmbedding
from backend.services.jobs import CANCELLED, DONE, RUNNING, EverythingJob, TooManyJobs

pytestmark = pytest.mark.cluster
redis = pytest.importorskip("redis", reason="the cluster extra is not installed (pip install '.[cluster]')")

from backend.cluster import redis_store  # noqa: E402


@pytest.fixture
def client(redis_server):
    connection = redis_store.connect(redis_server.url)
    connection.flushdb()
    return connection


def _entry(seed: int) -> CachedEmbedding:
    embedding = np.random.default_rng(seed).standard_normal((256, 64, 64)).astype(np.float32)
    return CachedEmbedding(embedding, (480, 640), (768, 1024), "model-x", 12.5)


def test_embeddings_round_trip_exactly_and_expire(client):
    store = redis_store.RedisEmbeddingCache(client, ttl_s=60)
    key = "0123456789abcdef0123456789abcdef"
    assert store.get(key) is None
    store.put(key, _entry(1))
    got = store.get(key)
    assert np.array_equal(got.embedding, _entry(1).embedding) and got.embedding.dtype == np.float32
    assert (got.original_size, got.input_size, got.model_key, got.encode_ms) == (
        (480, 640),
        (768, 1024),
        "model-x",
        12.5,
    )
    assert 0 < client.ttl(redis_store.EMBEDDING_PREFIX + key) <= 60
    assert store.get("not-a-key") is None
    stats = store.stats()
    assert stats["status"] == "ok" and stats["hits"] == 1 and stats["misses"] == 1

    short = redis_store.RedisEmbeddingCache(client, ttl_s=1)
    short.put("f" * 32, _entry(2))
    time.sleep(2.1)
    assert short.get("f" * 32) is None


def test_job_store_finds_updates_conditionally_and_bounds_unfinished_jobs(client):
    store = redis_store.RedisJobStore(client, ttl_s=60, max_jobs=2)
    first = EverythingJob(job_id="a" * 32, image_id="i" * 32, params={"points_per_side": 4})
    store.add(first, ("i" * 32, (("points_per_side", 4),)))
    assert store.find(("i" * 32, (("points_per_side", 4),))).job_id == first.job_id
    assert store.find(("i" * 32, (("points_per_side", 5),))) is None
    assert store.update(first.job_id, status=RUNNING, progress=0.5)
    assert (store.get(first.job_id).status, store.get(first.job_id).progress) == (RUNNING, 0.5)
    assert store.update(first.job_id, status=CANCELLED)
    # A finished (cancelled) job is not overwritten by a late update from the host that ran it.
    assert not store.update(first.job_id, unless=(DONE, CANCELLED), status=DONE)
    assert store.get(first.job_id).status == CANCELLED
    store.add(EverythingJob(job_id="b" * 32, image_id="j" * 32, params={}), ("j" * 32, ()))
    store.add(EverythingJob(job_id="c" * 32, image_id="k" * 32, params={}), ("k" * 32, ()))
    with pytest.raises(TooManyJobs):
        store.add(EverythingJob(job_id="d" * 32, image_id="l" * 32, params={}), ("l" * 32, ()))
    assert {j.job_id for j in store.jobs()} == {"a" * 32, "b" * 32, "c" * 32}


def test_redis_mode_refuses_to_start_without_a_shared_secret(redis_server):
    from backend.config import Config

    with pytest.raises(ConfigError, match="SAM_SECRET"):
        Config.from_env(environ={}, overrides={"redis_url": redis_server.url})


def _app(url: str, tmp_path):
    from backend.server.app import create_app
    from backend.services.weights import WeightsInfo

    return create_app(
        {
            "encode_batch": FakeEncoder(),
            "model": None,
            "weights_info": WeightsInfo("vit_t", "real", "fake-encoder", None, "a fake forward pass"),
            "decoders": [],
            "data_dir": str(tmp_path / "data"),
            "redis_url": url,
            "allow_download": False,
            "secret": "shared",
            "TESTING": True,
        }
    )


def test_redis_down_answers_503_with_retry_after_then_recovers_by_itself(tmp_path):
    server = RedisServer()
    server.start()
    try:
        app = _app(server.url, tmp_path)
        web = app.test_client()
        upload = web.post("/api/images", data=image_bytes(distinct_image(1)), content_type="image/png")
        assert upload.status_code == 200, upload.get_json()
        image_id = upload.get_json()["id"]
        assert web.get(f"/api/embeddings/{image_id}").status_code == 200
        assert web.get("/healthz").get_json()["cache"]["status"] == "ok"

        server.stop()
        for response in (
            web.post("/api/images", data=image_bytes(distinct_image(2)), content_type="image/png"),
            web.get(f"/api/embeddings/{image_id}"),
            web.get(f"/api/everything/{'e' * 32}"),
            web.post(f"/api/images/{image_id}/everything", json={}),
        ):
            assert response.status_code == 503, response.get_data(as_text=True)
            assert response.get_json()["error"] == "store_unavailable"
            assert "Redis" in response.get_json()["message"]
            assert int(response.headers["Retry-After"]) >= 1
        health = web.get("/healthz")
        assert health.status_code == 503 and health.get_json()["cache"]["status"] == "unreachable"

        server.start()  # the same port, empty (no persistence): the host reconnects by itself
        deadline = time.monotonic() + 30
        while web.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline, "the host did not recover"
            time.sleep(0.2)
        again = web.post("/api/images", data=image_bytes(distinct_image(1)), content_type="image/png")
        assert again.status_code == 200 and again.get_json()["id"] == image_id
        assert again.get_json()["cache_hit"] is False  # Redis came back empty: encoded again
        assert web.get(f"/api/embeddings/{image_id}").status_code == 200
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
