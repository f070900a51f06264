"""gzip copies of response bodies, made once and kept in memory: embeddings and static files."""

from __future__ import annotations

import gzip
import os
import threading
from collections import OrderedDict
from typing import Any

from flask import request

from ..services.codec import EMBEDDING_GZIP_LEVEL

# gzip only when it saves at least this fraction: below that the CPU time and the client's lost progress
# information (Content-Length then counts compressed bytes) are not worth it.
MIN_GZIP_SAVING = 0.10
COMPRESSIBLE_SUFFIXES = {".wasm", ".mjs", ".js", ".css", ".html", ".json", ".svg", ".map", ".txt"}


class GzipCache:
    """gzip copies of bodies under a key, least recently used dropped beyond ``max_bytes``. A body that gzip
    would not shrink enough is remembered as None, so it is not compressed again."""

    def __init__(self, max_bytes: int, compresslevel: int) -> None:
        self.max_bytes = max_bytes
        self.compresslevel = compresslevel
        self._bodies: OrderedDict[Any, bytes | None] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def _lookup(self, key: Any) -> tuple[bool, bytes | None]:
        """(whether the key is known, its gzip copy or None)."""
        with self._lock:
            if key not in self._bodies:
                return False, None
            self._bodies.move_to_end(key)
            return True, self._bodies[key]

    def _compress(self, key: Any, raw: bytes) -> bytes | None:
        packed = gzip.compress(raw, compresslevel=self.compresslevel, mtime=0)
        if len(packed) > (1 - MIN_GZIP_SAVING) * len(raw):
            packed = None
        with self._lock:
            self._bodies[key] = packed
            self._bytes += len(packed) if packed else 0
            while self._bytes > self.max_bytes and self._bodies:
                _, dropped = self._bodies.popitem(last=False)
                self._bytes -= len(dropped) if dropped else 0
        return packed


class BodyCache(GzipCache):
    """Recently served embedding bodies that gzip shrank enough, so they are compressed once, not per request."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, compresslevel=EMBEDDING_GZIP_LEVEL)

    def get(self, image_id: str, fmt: str, accept_gzip: bool, make_body) -> tuple[bytes, bool]:
        if not accept_gzip:
            return make_body(), False
        key = (image_id, fmt)
        known, packed = self._lookup(key)
        if packed is not None:
            return packed, True
        body = make_body()
        if not known:
            packed = self._compress(key, body)
        return (packed, True) if packed is not None else (body, False)


class StaticGzip(GzipCache):
    """gzip copies of static files (the 14 MB onnxruntime WASM shrinks to a quarter), made on first request."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, compresslevel=6)
        self._file_locks: dict[str, threading.Lock] = {}

    def get(self, path: str, stat: os.stat_result) -> bytes | None:
        key = (path, stat.st_mtime_ns, stat.st_size)
        known, packed = self._lookup(key)
        if known:
            return packed
        with self._lock:
            file_lock = self._file_locks.setdefault(path, threading.Lock())
        with file_lock:  # One thread compresses a given file; the others wait for its result.
            known, packed = self._lookup(key)
            if known:
                return packed
            with open(path, "rb") as file:
                return self._compress(key, file.read())


def accepts_gzip() -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "").lower()


def client_has(etag: str) -> bool:
    """Whether the request's If-None-Match lists ``etag`` (weak or strong)."""
    header = request.headers.get("If-None-Match", "")
    return etag in [tag.strip().removeprefix("W/").strip('"') for tag in header.split(",") if tag.strip()]
