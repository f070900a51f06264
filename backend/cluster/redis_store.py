"""Shared state in Redis (``SAM_REDIS_URL``): the embedding store and the everything-job store of every web host.

Entries expire ``SAM_REDIS_TTL`` seconds after their last use (each read renews it), and the server should
also bound its memory: run it with ``--maxmemory <bytes> --maxmemory-policy allkeys-lru`` so the least
recently used embeddings go first when it is full (docs/deploy.md). A value is a small JSON header line
followed by the float32 embedding's bytes.

Jobs are JSON records (``sam:job:<id>``, the same TTL) plus a key per (image, parameters) so asking any host
again finds the job; a conditional update (``unless``) is a WATCH/MULTI transaction, so a cancel on one host
is never overwritten by progress from the host running the job. Waiting for a change polls (every 0.2 s).

Redis unreachable: every call raises ``StoreUnavailable`` (a ``RetryLater``: uploads and polls answer 503
with ``Retry-After``); redis-py reconnects on the next call, so a host recovers by itself when Redis returns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from typing import Any

import numpy as np
import redis

from ..services.cache import CachedEmbedding, is_valid_key
from ..services.interfaces import RetryLater
from ..services.jobs import EverythingJob, TooManyJobs

logger = logging.getLogger(__name__)

EMBEDDING_PREFIX = "sam:embedding:"
JOB_PREFIX = "sam:job:"
JOB_KEY_PREFIX = "sam:jobkey:"
JOB_INDEX = "sam:jobs"
POLL_S = 0.2
RETRY_AFTER_S = 2
_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError)


class StoreUnavailable(RetryLater):
    """Redis cannot be reached (or is loading); try again after ``retry_after`` seconds."""

    code = "store_unavailable"


def connect(url: str, timeout_s: float = 2.0) -> redis.Redis:
    """A client with short timeouts, so a dead server turns into quick 503s rather than hung requests."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=10
    )


def call(what: str, function, *args, **kwargs) -> Any:
    """Runs one Redis call; connection trouble becomes ``StoreUnavailable``."""
    try:
        return function(*args, **kwargs)
    except _DOWN as error:
        raise StoreUnavailable(
            f"the shared store (Redis) is unreachable while {what}: {error}", RETRY_AFTER_S
        ) from None


class RedisEmbeddingCache:
    """``EmbeddingCache``'s interface (get, put, in, len, bytes_used, max_bytes) over one Redis database."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = int(ttl_s)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedEmbedding | None:
        if not is_valid_key(key):
            return None
        value = call("reading an embedding", self.client.getex, EMBEDDING_PREFIX + key, ex=self.ttl_s)
        with self._lock:
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
        return None if value is None else _decode(value)

    def put(self, key: str, entry: CachedEmbedding) -> None:
        if not is_valid_key(key):
            raise ValueError(f"cache keys are 32 lowercase hex digits, not {key!r}")
        call("storing an embedding", self.client.set, EMBEDDING_PREFIX + key, _encode(entry), ex=self.ttl_s)

    def __contains__(self, key: str) -> bool:
        return is_valid_key(key) and bool(call("looking up an embedding", self.client.exists, EMBEDDING_PREFIX + key))

    def stats(self) -> dict[str, Any]:
        """For /healthz: ``status`` "ok" with Redis' memory figures and this host's hits/misses, or
        "unreachable" with the reason (the host then answers 503 until Redis is back)."""
        try:
            memory = call("checking health", self.client.info, "memory")
        except StoreUnavailable as error:
            return {"store": "redis", "status": "unreachable", "message": str(error)}
        return {
            "store": "redis",
            "status": "ok",
            "used_memory": int(memory["used_memory"]),
            "maxmemory": int(memory.get("maxmemory", 0)),
            "maxmemory_policy": memory.get("maxmemory_policy"),
            "ttl_s": self.ttl_s,
            "hits": self.hits,
            "misses": self.misses,
        }


class RedisJobStore:
    """The ``JobStore`` seam over Redis: every host sees every job; at most ``max_jobs`` unfinished at once."""

    def __init__(self, client: redis.Redis, ttl_s: int, max_jobs: int = 32) -> None:
        self.client = client
        self.ttl_s = int(ttl_s)
        self.max_jobs = max(1, int(max_jobs))

    def add(self, job: EverythingJob, key: tuple) -> None:
        jobs = self.jobs()
        unfinished = [j for j in jobs if not j.finished]
        if len(unfinished) >= self.max_jobs:
            raise TooManyJobs(f"{len(unfinished)} everything jobs are already queued or running; try again later")
        pipe = self.client.pipeline()
        pipe.set(JOB_PREFIX + job.job_id, _job_json(job), ex=self.ttl_s)
        pipe.set(_key_name(key), job.job_id, ex=self.ttl_s)
        pipe.zadd(JOB_INDEX, {job.job_id: job.created})
        finished = [j for j in jobs if j.finished]
        for old in finished[: max(0, len(jobs) + 1 - 4 * self.max_jobs)]:  # The index stays bounded too.
            pipe.zrem(JOB_INDEX, old.job_id)
        call("adding a job", pipe.execute)

    def get(self, job_id: str) -> EverythingJob | None:
        value = call("reading a job", self.client.get, JOB_PREFIX + job_id)
        return None if value is None else _job_from_json(value)

    def find(self, key: tuple) -> EverythingJob | None:
        job_id = call("looking up a job", self.client.get, _key_name(key))
        return None if job_id is None else self.get(job_id.decode())

    def update(self, job_id: str, unless: tuple[str, ...] = (), **changes: Any) -> bool:
        """Changes fields unless the job's status is in ``unless``; False when it was, or the job is gone."""
        name = JOB_PREFIX + job_id

        def transaction(pipe) -> bool:
            value = pipe.get(name)
            if value is None:
                return False
            job = _job_from_json(value)
            if job.status in unless:
                return False
            for field, new in changes.items():
                setattr(job, field, new)
            pipe.multi()
            pipe.set(name, _job_json(job), ex=self.ttl_s)
            return True

        return bool(call("updating a job", self.client.transaction, transaction, name, value_from_callable=True))

    def wait_for_change(self, job_id: str, seen: tuple[str, float], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.get(job_id)
            if job is None or (job.status, job.progress) != seen:
                return
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))

    def jobs(self) -> list[EverythingJob]:
        ids = call("listing jobs", self.client.zrange, JOB_INDEX, 0, -1)
        if not ids:
            return []
        values = call("reading jobs", self.client.mget, [JOB_PREFIX + i.decode() for i in ids])
        gone = [i for i, v in zip(ids, values, strict=True) if v is None]
        if gone:  # Expired records leave the index too.
            call("pruning jobs", self.client.zrem, JOB_INDEX, *gone)
        return [_job_from_json(v) for v in values if v is not None]


def _key_name(key: tuple) -> str:
    return JOB_KEY_PREFIX + hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _job_json(job: EverythingJob) -> bytes:
    return json.dumps(dataclasses.asdict(job)).encode()


def _job_from_json(value: bytes) -> EverythingJob:
    return EverythingJob(**json.loads(value))


def _encode(entry: CachedEmbedding) -> bytes:
    embedding = np.ascontiguousarray(entry.embedding, dtype=np.float32)
    header = {
        "shape": list(embedding.shape),
        "original_size": list(entry.original_size),
        "input_size": list(entry.input_size),
        "model_key": entry.model_key,
        "encode_ms": entry.encode_ms,
    }
    return json.dumps(header).encode() + b"\n" + embedding.tobytes()


def _decode(value: bytes) -> CachedEmbedding:
    newline = value.index(b"\n")
    header = json.loads(value[:newline])
    embedding = np.frombuffer(value, dtype=np.float32, offset=newline + 1).reshape(header["shape"])
    return CachedEmbedding(
        embedding=embedding,
        original_size=tuple(header["original_size"]),
        input_size=tuple(header["input_size"]),
        model_key=header["model_key"],
        encode_ms=float(header["encode_ms"]),
    )
