"""The three seams a scaled-out deployment replaces: where embeddings are kept, what encodes images, where
everything-mode jobs are kept.

| interface | local implementation (the default) | what routes call |
|---|---|---|
| ``EmbeddingStore`` | ``backend.services.cache.EmbeddingCache`` (memory LRU + optional disk dir) | via ``EncoderService`` |
| ``ImageEncoder`` | ``backend.services.batching.BatchQueue`` (bounded queue, batched forward passes in-process) | via ``EncoderService`` |
| ``JobStore`` | ``backend.services.jobs.MemoryJobStore`` (this process's jobs) | via ``EverythingService`` |

Routes never see these: they call ``EncoderService`` (backend/services/encoder.py) and ``EverythingService``
(backend/services/everything.py), which take any implementation, so a shared store or a remote encoder plugs in at
``create_app`` without touching a route.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Any, Protocol

import numpy as np

from .cache import CachedEmbedding
from .jobs import EverythingJob


class RetryLater(RuntimeError):
    """The encoder cannot serve the request now; ``retry_after`` is a suggested wait in whole seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EncoderBusy(RetryLater):
    """The queue is full."""


class EncodeTimeout(RetryLater):
    """The embedding was not ready within the request timeout."""


class EncoderClosed(RuntimeError):
    """The encoder was shut down."""


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """One image's encoder output: ``embedding`` float32 [256, 64, 64], ``input_size`` (h, w) after
    resize-longest-side, ``encode_ms`` the wall time of its forward pass, ``batch_size`` images in that pass."""

    embedding: np.ndarray
    input_size: tuple[int, int]
    encode_ms: float
    batch_size: int


class EmbeddingStore(Protocol):
    """Embeddings by image id (32 hex digits). ``get`` answers None for unknown, evicted or unreadable ids."""

    def get(self, key: str) -> CachedEmbedding | None: ...

    def put(self, key: str, entry: CachedEmbedding) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class ImageEncoder(Protocol):
    """Turns uint8 RGB pixels [H, W, 3] into embeddings.

    ``submit`` raises ``EncoderBusy`` (full) or ``EncoderClosed`` at once; its future fails with the forward
    pass's error, and cancelling a future whose image has not started spares the work.
    """

    def submit(self, pixels: np.ndarray) -> concurrent.futures.Future[EncodedImage]: ...

    def retry_after(self) -> int: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class JobStore(Protocol):
    """Everything-mode job records by id, and by (image id, parameters) key so asking again finds the job.

    ``add`` raises ``backend.services.jobs.TooManyJobs`` when it is full of unfinished jobs; ``update`` changes fields
    atomically unless the job's status is one of ``unless`` (answering whether it did) and wakes
    ``wait_for_change`` callers.
    """

    def add(self, job: EverythingJob, key: tuple) -> None: ...

    def get(self, job_id: str) -> EverythingJob | None: ...

    def find(self, key: tuple) -> EverythingJob | None: ...

    def update(self, job_id: str, unless: tuple[str, ...] = (), **changes: Any) -> bool: ...

    def wait_for_change(self, job_id: str, seen: tuple[str, float], timeout: float) -> None: ...

    def jobs(self) -> list[EverythingJob]: ...
