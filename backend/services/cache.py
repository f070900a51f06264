"""The local ``EmbeddingStore``: an in-memory LRU bounded in bytes, optionally backed by a disk directory.

Keys are image ids: ``image_key`` is an HMAC of the model identity and the decoded pixels under a server
secret, so the same image always gets the same id while nobody can compute an id from an image they hold.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import os
import re
import threading
from pathlib import Path

import numpy as np

from ..runtime.files import atomic_write

logger = logging.getLogger(__name__)

KEY_PATTERN = re.compile(r"^[0-9a-f]{32}$")


def image_key(secret: bytes, model_key: str, pixels: np.ndarray, original_size: tuple[int, int] | None = None) -> str:
    """A 32-hex-digit id for ``pixels`` (uint8 [H, W, 3]) as encoded by the model ``model_key``;
    ``original_size`` (H, W) when the pixels are a downscaled copy of a larger upload."""
    digest = hmac.new(secret, digestmod=hashlib.sha256)
    digest.update(model_key.encode("utf-8") + b"\0")
    digest.update(repr(tuple(pixels.shape)).encode("ascii") + str(pixels.dtype).encode("ascii") + b"\0")
    if original_size is not None and tuple(original_size) != tuple(pixels.shape[:2]):
        digest.update(b"from" + repr(tuple(int(v) for v in original_size)).encode("ascii") + b"\0")
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.hexdigest()[:32]


def is_valid_key(key: str) -> bool:
    return bool(KEY_PATTERN.match(key))


@dataclasses.dataclass(frozen=True)
class CachedEmbedding:
    """``embedding``: float32 [256, 64, 64]. Sizes are (H, W): the upload's, and after resize-longest-side."""

    embedding: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    model_key: str
    encode_ms: float = 0.0

    @property
    def nbytes(self) -> int:
        return int(self.embedding.nbytes)


class EmbeddingCache:
    """Thread-safe LRU of ``CachedEmbedding`` by image id, at most ``max_bytes`` of embeddings in memory.

    With ``disk_dir`` every entry is also written there (``<id>.npz``, atomically, with a checksum) and read
    back on a memory miss, so a restarted server or another worker process finds it; the least recently used files go when the
    directory holds more than ``disk_max_bytes``.
    """

    def __init__(self, max_bytes: int, disk_dir: os.PathLike | None = None, disk_max_bytes: int = 4 << 30) -> None:
        self.max_bytes = int(max_bytes)
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.disk_max_bytes = int(disk_max_bytes)
        if self.disk_dir is not None:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
        self._entries: collections.OrderedDict[str, CachedEmbedding] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def stats(self) -> dict:
        return {"entries": len(self), "bytes": self.bytes_used, "max_bytes": self.max_bytes}

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._entries:
                return True
        path = self._disk_path(key)
        return path is not None and path.exists()

    def get(self, key: str) -> CachedEmbedding | None:
        if not is_valid_key(key):
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
        entry = self._read_disk(key)
        with self._lock:
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            self._insert(key, entry)
        return entry

    def put(self, key: str, entry: CachedEmbedding) -> None:
        if not is_valid_key(key):
            raise ValueError(f"cache keys are 32 lowercase hex digits, not {key!r}")
        with self._lock:
            self._insert(key, entry)
        self._write_disk(key, entry)

    def _insert(self, key: str, entry: CachedEmbedding) -> None:
        if key in self._entries:
            self._bytes -= self._entries.pop(key).nbytes
        if entry.nbytes > self.max_bytes:
            return  # Larger than the whole budget: only the disk (if any) keeps it.
        self._entries[key] = entry
        self._bytes += entry.nbytes
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.nbytes

    def _disk_path(self, key: str) -> Path | None:
        if self.disk_dir is None or not is_valid_key(key):
            return None
        return self.disk_dir / f"{key}.npz"

    def _write_disk(self, key: str, entry: CachedEmbedding) -> None:
        path = self._disk_path(key)
        if path is None:
            return
        try:
            with atomic_write(path, mode=None) as tmp_path, open(tmp_path, "wb") as file:
                np.savez(
                    file,
                    embedding=entry.embedding.astype(np.float32, copy=False),
                    original_size=np.asarray(entry.original_size, dtype=np.int64),
                    input_size=np.asarray(entry.input_size, dtype=np.int64),
                    model_key=np.asarray(entry.model_key),
                    encode_ms=np.asarray(entry.encode_ms, dtype=np.float64),
                    checksum=np.asarray(_checksum(entry)),
                )
            self._prune_disk()
        except OSError as error:
            logger.warning("could not write embedding %s to the disk cache: %s", key, error)

    def _prune_disk(self) -> None:
        files = []
        for path in self.disk_dir.glob("*.npz"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # Removed by another worker meanwhile.
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.disk_max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size

    def _read_disk(self, key: str) -> CachedEmbedding | None:
        """The entry in ``<key>.npz``, or None. A file that cannot be read whole and checked (truncated,
        bit-flipped, empty, from an older format) is a miss: it is logged and deleted, so the image is
        encoded again on its next upload."""
        path = self._disk_path(key)
        if path is None or not path.exists():
            return None
        try:
            os.utime(path)  # Recently read: pruned last.
            with np.load(path, allow_pickle=False) as data:
                entry = CachedEmbedding(
                    embedding=np.ascontiguousarray(data["embedding"], dtype=np.float32),
                    original_size=tuple(int(v) for v in data["original_size"]),
                    input_size=tuple(int(v) for v in data["input_size"]),
                    model_key=str(data["model_key"]),
                    encode_ms=float(data["encode_ms"]),
                )
                stored_checksum = str(data["checksum"])
            if stored_checksum != _checksum(entry):
                raise ValueError("checksum mismatch")
            return entry
        except FileNotFoundError:  # Pruned by another worker meanwhile.
            return None
        except Exception as error:  # Whatever a damaged file raises (BadZipFile, EOFError, zlib.error, ...).
            logger.warning("deleting unreadable disk cache entry %s: %s: %s", path, type(error).__name__, error)
            with contextlib.suppress(OSError):
                path.unlink()
            return None


def _checksum(entry: CachedEmbedding) -> str:
    """sha256 of everything an entry holds, so any changed byte of a cache file is noticed."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(entry.embedding, dtype=np.float32).data)
    digest.update(repr((tuple(entry.original_size), tuple(entry.input_size), entry.model_key)).encode("utf-8"))
    return digest.hexdigest()
