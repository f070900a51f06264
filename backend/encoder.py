"""The encoding service: one model per process, a bounded queue, batched forward passes, timeouts.

``EncoderService.encode(pixels)`` is what the upload handler calls; ``embedding(image_id)`` and
``predictor_for(image_id)`` give other parts (everything mode) the cached embedding of an uploaded image, or a
``SamPredictor`` already holding it, without encoding again.

All forward passes of the image encoder run on one worker thread, so the model is never used by two encodes
at once; requests from any number of threads queue up for it, and whatever is waiting when the worker becomes
free (up to ``max_batch_size`` images) goes through the encoder as one batch.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .cache import CachedEmbedding, EmbeddingCache, image_key

logger = logging.getLogger(__name__)

# (embedding float32 [256, 64, 64], input_size (h, w)) for each image of a batch.
EncodedBatch = list[tuple[np.ndarray, tuple[int, int]]]
BatchEncoder = Callable[[Sequence[np.ndarray]], EncodedBatch]


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
    """The service was shut down."""


class DeviceError(ValueError):
    """The configured device does not exist on this machine."""


@dataclasses.dataclass(frozen=True)
class EncodeResult:
    """``encode_ms``: the forward pass that produced the embedding (its batch's wall time; the first encode's
    time on a cache hit). ``wait_ms``: how long this request waited in all, queue included."""

    image_id: str
    entry: CachedEmbedding
    cache_hit: bool
    encode_ms: float
    wait_ms: float
    batch_size: int


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; explicit CUDA devices are checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"SAM_DEVICE={name} but this machine has no usable CUDA device; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"SAM_DEVICE={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def prepare_model(
    model: torch.nn.Module, device: torch.device, precision: str = "auto", cache_dir: str | None = None
) -> str:
    """Moves ``model`` to ``device`` in eval mode and sets its encoder path; returns the precision chosen.

    ``auto`` lets the model pick the fastest path within the accuracy bound on this device (``Sam.set_precision``:
    bf16 / fp16 on CUDA and on CPUs with native bf16; on CPUs with VNNI int8 or fp32 as measured once, the
    measurement cached in ``cache_dir``; else fp32).
    """
    model.to(device)
    model.eval()
    set_precision = getattr(model, "set_precision", None)
    if set_precision is None:
        return "fp32"
    return set_precision(precision, cache_dir=cache_dir)


def encode_images(model: torch.nn.Module, images: Sequence[np.ndarray]) -> EncodedBatch:
    """Encodes uint8 RGB images [H, W, 3] (any sizes) in one forward pass of ``model.image_encoder``.

    Same preprocessing as ``SamPredictor.set_image``: resize longest side to the model's image size, normalise,
    zero-pad bottom/right. Returns float32 [256, 64, 64] embeddings on the CPU with each resized (h, w).
    """
    from .sam.transforms import ResizeLongestSide

    transform = ResizeLongestSide(model.image_size)
    device = model.device
    inputs, input_sizes = [], []
    for image in images:
        resized = transform.apply_image(np.ascontiguousarray(image))
        tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)
        if device.type == "cuda":
            tensor = tensor.pin_memory()
        inputs.append(model.preprocess(tensor.to(device, non_blocking=True).float()))
        input_sizes.append((int(resized.shape[0]), int(resized.shape[1])))
    with torch.inference_mode():
        embeddings = model.image_encoder(torch.stack(inputs, dim=0))
    embeddings = embeddings.float().cpu().numpy()
    return [(np.ascontiguousarray(embeddings[i]), input_sizes[i]) for i in range(len(images))]


@dataclasses.dataclass
class _Job:
    key: str
    pixels: np.ndarray
    future: concurrent.futures.Future[tuple[CachedEmbedding, int]]
    waiters: int = 1


class EncoderService:
    """Encodes images once each, queued and batched, with results kept in ``cache``.

    Arguments: ``model`` (a ``Sam``, already on its device), ``cache``, ``secret`` (key of the image ids),
    ``model_key`` (identifies the weights, so ids differ between models), ``max_batch_size`` (images per
    forward pass), ``max_queue_size`` (images waiting; beyond it ``encode`` raises ``EncoderBusy``),
    ``timeout_s`` (longest wait of one request), ``batch_window_s`` (how long the worker waits for company
    after the first image of an idle period), ``encode_batch`` (replaces the model's forward pass: tests).
    """

    def __init__(
        self,
        model: torch.nn.Module | None,
        cache: EmbeddingCache,
        secret: bytes,
        model_key: str,
        *,
        max_batch_size: int = 4,
        max_queue_size: int = 8,
        timeout_s: float = 120.0,
        batch_window_s: float = 0.005,
        encode_batch: BatchEncoder | None = None,
    ) -> None:
        if encode_batch is None and model is None:
            raise ValueError("EncoderService needs a model or an encode_batch function")
        self.model = model
        self.cache = cache
        self.model_key = model_key
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_queue_size = max(1, int(max_queue_size))
        self.timeout_s = float(timeout_s)
        self.batch_window_s = float(batch_window_s)
        self._secret = secret
        self._encode_batch = encode_batch or (lambda images: encode_images(model, images))
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=self.max_queue_size)
        self._pending: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._closed = False
        # Statistics (read by /healthz and by tests).
        self.batches = 0
        self.images_encoded = 0
        self.largest_batch = 0
        self._seconds_per_image = 1.0
        self._worker = threading.Thread(target=self._run, name="sam-encoder", daemon=True)
        self._worker.start()

    # Public API -------------------------------------------------------------------------------------------

    def image_id(self, pixels: np.ndarray) -> str:
        return image_key(self._secret, self.model_key, pixels)

    def encode(self, pixels: np.ndarray, timeout_s: float | None = None) -> EncodeResult:
        """The embedding of uint8 RGB ``pixels`` [H, W, 3]: from the cache, or encoded (waiting in the queue).

        Raises ``EncoderBusy`` when the queue is full, ``EncodeTimeout`` after ``timeout_s`` (default: the
        service's), ``EncoderClosed`` after ``close()``; errors of the forward pass propagate.
        """
        started = time.perf_counter()
        key = self.image_id(pixels)
        cached = self.cache.get(key)
        if cached is not None:
            return EncodeResult(key, cached, True, cached.encode_ms, _ms_since(started), 0)
        job = self._join_or_enqueue(key, pixels)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            entry, batch_size = job.future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self._give_up(job)
            raise EncodeTimeout(
                f"the image was not encoded within {timeout:g} s; the server is busy, try again", self.retry_after()
            ) from None
        except concurrent.futures.CancelledError:
            raise EncoderClosed("the encoder shut down before this image was encoded") from None
        return EncodeResult(key, entry, False, entry.encode_ms, _ms_since(started), batch_size)

    def embedding(self, image_id: str) -> CachedEmbedding | None:
        """The cached embedding of an uploaded image, or None when unknown or evicted."""
        return self.cache.get(image_id)

    def predictor_for(self, image_id: str):
        """A fresh ``SamPredictor`` holding the cached embedding of ``image_id`` (no encoding).

        Raises ``KeyError`` when the id is unknown or evicted (the client then uploads again).
        """
        from .sam import SamPredictor

        entry = self.embedding(image_id)
        if entry is None:
            raise KeyError(image_id)
        if self.model is None:
            raise RuntimeError("this EncoderService was built without a model")
        predictor = SamPredictor(self.model)
        predictor.set_embedding(entry.embedding, entry.original_size, entry.input_size)
        return predictor

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def retry_after(self) -> int:
        """Seconds a turned-away client should wait: roughly the time to drain the queue."""
        waiting = self._queue.qsize() + 1
        return max(1, math.ceil(waiting * self._seconds_per_image))

    def stats(self) -> dict:
        return {
            "queue_depth": self.queue_depth,
            "queue_size": self.max_queue_size,
            "max_batch_size": self.max_batch_size,
            "batches": self.batches,
            "images_encoded": self.images_encoded,
            "largest_batch": self.largest_batch,
        }

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops the worker; queued requests fail with ``EncoderClosed``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()
        self._queue.put(None)
        self._worker.join(timeout_s)

    # Internals --------------------------------------------------------------------------------------------

    def _join_or_enqueue(self, key: str, pixels: np.ndarray) -> _Job:
        with self._lock:
            if self._closed:
                raise EncoderClosed("the encoder is shut down")
            job = self._pending.get(key)
            if job is not None:  # The same image is already on its way: wait for that one.
                job.waiters += 1
                return job
            job = _Job(key, pixels, concurrent.futures.Future())
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise EncoderBusy(
                    f"the encoder queue is full ({self.max_queue_size} images waiting); try again shortly",
                    self.retry_after(),
                ) from None
            self._pending[key] = job
            return job

    def _give_up(self, job: _Job) -> None:
        with self._lock:
            job.waiters -= 1
            if job.waiters <= 0 and job.future.cancel():  # Still queued: the worker will skip it.
                self._pending.pop(job.key, None)

    def _next_batch(self) -> list[_Job] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.batch_window_s
        while len(batch) < self.max_batch_size:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # Finish this batch, then stop.
                break
            batch.append(job)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if live:
                self._encode_and_deliver(live)

    def _encode_and_deliver(self, live: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            encoded = self._encode_batch([job.pixels for job in live])
            if len(encoded) != len(live):
                raise RuntimeError(f"encoder returned {len(encoded)} embeddings for {len(live)} images")
        except Exception as error:
            if len(live) > 1:  # One bad image must not fail its neighbours: encode them one by one.
                logger.warning("a batch of %d images failed (%s); encoding them one at a time", len(live), error)
                for job in live:
                    self._encode_and_deliver([job])
                return
            logger.exception("encoding an image failed")  # Delivered to its request(s); the worker goes on.
            self._finish(live[0], error=error)
            return
        elapsed_ms = _ms_since(started)
        self.batches += 1
        self.images_encoded += len(live)
        self.largest_batch = max(self.largest_batch, len(live))
        self._seconds_per_image = 0.7 * self._seconds_per_image + 0.3 * (elapsed_ms / 1000 / len(live))
        logger.info("encoded %d image(s) in %.0f ms", len(live), elapsed_ms)
        for job, (embedding, input_size) in zip(live, encoded, strict=True):
            entry = CachedEmbedding(
                embedding=embedding,
                original_size=(int(job.pixels.shape[0]), int(job.pixels.shape[1])),
                input_size=(int(input_size[0]), int(input_size[1])),
                model_key=self.model_key,
                encode_ms=elapsed_ms,
            )
            try:
                self.cache.put(job.key, entry)
            except Exception:  # A full disk must not lose the answer already computed.
                logger.exception("could not cache embedding %s", job.key)
            self._finish(job, result=(entry, len(live)))

    def _finish(self, job: _Job, result=None, error: BaseException | None = None) -> None:
        with self._lock:
            self._pending.pop(job.key, None)
        job.pixels = None  # type: ignore[assignment]  # Free the image as soon as possible.
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
