"""The encoding service the routes call: image ids, the embedding store, one encode per image, timeouts.

``EncoderService.encode(pixels)`` answers from the store or has the image encoded by its ``ImageEncoder``
(the in-process ``BatchQueue`` by default; any ``backend.services.interfaces.ImageEncoder``, e.g. a remote deployment,
can take its place); concurrent uploads of the same image share one encode. ``embedding(image_id)`` gives
other parts (everything mode) the stored embedding of an uploaded image without encoding again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time

import numpy as np
import torch

from .batching import BatchQueue
from .cache import CachedEmbedding, image_key
from .interfaces import EmbeddingStore, EncodedImage, EncoderClosed, EncodeTimeout, ImageEncoder
from .model_runner import BatchEncoder, encode_images

logger = logging.getLogger(__name__)


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


@dataclasses.dataclass
class _InFlight:
    """An image on its way through the encoder, and how many requests wait for it."""

    encoding: concurrent.futures.Future[EncodedImage]
    stored: concurrent.futures.Future[tuple[CachedEmbedding, int]]
    waiters: int = 1


class EncoderService:
    """Encodes images once each, with results kept in ``cache`` (any ``EmbeddingStore``).

    Arguments: ``model`` (a ``Sam``, already on its device; everything mode decodes with it), ``cache``,
    ``secret`` (key of the image ids), ``model_key`` (identifies the weights, so ids differ between models),
    ``timeout_s`` (longest wait of one request). The encoder is ``image_encoder`` when given, else a local
    ``BatchQueue`` over the model's forward pass (or ``encode_batch``, which replaces it: tests) with
    ``max_batch_size``, ``max_queue_size`` and ``batch_window_s``.
    """

    def __init__(
        self,
        model: torch.nn.Module | None,
        cache: EmbeddingStore,
        secret: bytes,
        model_key: str,
        *,
        max_batch_size: int = 4,
        max_queue_size: int = 8,
        timeout_s: float = 120.0,
        batch_window_s: float = 0.005,
        encode_batch: BatchEncoder | None = None,
        image_encoder: ImageEncoder | None = None,
    ) -> None:
        if image_encoder is None:
            if encode_batch is None and model is None:
                raise ValueError("EncoderService needs a model, an encode_batch function or an image_encoder")
            image_encoder = BatchQueue(
                encode_batch or (lambda images: encode_images(model, images)),
                max_batch_size=max_batch_size,
                max_queue_size=max_queue_size,
                batch_window_s=batch_window_s,
            )
        self.model = model
        self.cache = cache
        self.model_key = model_key
        self.timeout_s = float(timeout_s)
        self.encoder = image_encoder
        self.images_encoded = 0
        self._secret = secret
        self._in_flight: dict[str, _InFlight] = {}
        self._lock = threading.Lock()

    def image_id(self, pixels: np.ndarray, original_size: tuple[int, int] | None = None) -> str:
        return image_key(self._secret, self.model_key, pixels, original_size)

    def encode(
        self, pixels: np.ndarray, timeout_s: float | None = None, original_size: tuple[int, int] | None = None
    ) -> EncodeResult:
        """The embedding of uint8 RGB ``pixels`` [H, W, 3]: from the store, or encoded (waiting in the queue).
        ``original_size`` (H, W): the upload's size when ``pixels`` were downscaled from it.

        Raises ``EncoderBusy`` when the queue is full, ``EncodeTimeout`` after ``timeout_s`` (default: the
        service's), ``EncoderClosed`` after ``close()``; errors of the forward pass propagate.
        """
        started = time.perf_counter()
        key = self.image_id(pixels, original_size)
        cached = self.cache.get(key)
        if cached is not None:
            return EncodeResult(key, cached, True, cached.encode_ms, _ms_since(started), 0)
        flight = self._join_or_submit(key, pixels, original_size)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            entry, batch_size = flight.stored.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self._give_up(key, flight)
            raise EncodeTimeout(
                f"the image was not encoded within {timeout:g} s; the server is busy, try again",
                self.encoder.retry_after(),
            ) from None
        except concurrent.futures.CancelledError:
            raise EncoderClosed("the encoder shut down before this image was encoded") from None
        return EncodeResult(key, entry, False, entry.encode_ms, _ms_since(started), batch_size)

    def embedding(self, image_id: str) -> CachedEmbedding | None:
        """The stored embedding of an uploaded image, or None when unknown or evicted."""
        return self.cache.get(image_id)

    @property
    def queue_depth(self) -> int:
        return self.encoder.stats()["queue_depth"]

    def retry_after(self) -> int:
        return self.encoder.retry_after()

    @property
    def encoder_path(self) -> str | None:
        """How the model's image encoder computes, e.g. "int8 linear + fused attention" (None without a model)."""
        return getattr(self.model, "encoder_path", None)

    def stats(self) -> dict:
        return {**self.encoder.stats(), "encoder_path": self.encoder_path}

    def close(self) -> None:
        """Stops the encoder; waiting requests fail with ``EncoderClosed``."""
        self.encoder.close()

    def _join_or_submit(self, key: str, pixels: np.ndarray, original_size: tuple[int, int] | None) -> _InFlight:
        with self._lock:
            flight = self._in_flight.get(key)
            if flight is not None:  # The same image is already on its way: wait for that one.
                flight.waiters += 1
                return flight
            encoding = self.encoder.submit(pixels)  # Raises EncoderBusy / EncoderClosed.
            flight = _InFlight(encoding, concurrent.futures.Future())
            self._in_flight[key] = flight
        size = tuple(int(v) for v in (original_size or pixels.shape[:2]))
        encoding.add_done_callback(lambda done: self._store(key, size, flight, done))
        return flight

    def _store(self, key: str, original_size: tuple[int, int], flight: _InFlight, done) -> None:
        # Runs where the encoding finished: the entry is stored before any waiter wakes, so an upload that
        # follows its own answer is a cache hit.
        with self._lock:
            if self._in_flight.get(key) is flight:
                del self._in_flight[key]
        if done.cancelled():
            flight.stored.cancel()
            return
        error = done.exception()
        if error is not None:
            flight.stored.set_exception(error)
            return
        encoded: EncodedImage = done.result()
        entry = CachedEmbedding(
            embedding=encoded.embedding,
            original_size=original_size,
            input_size=encoded.input_size,
            model_key=self.model_key,
            encode_ms=encoded.encode_ms,
        )
        self.images_encoded += 1
        try:
            self.cache.put(key, entry)
        except Exception:  # A full disk must not lose the answer already computed.
            logger.exception("could not cache embedding %s", key)
        flight.stored.set_result((entry, encoded.batch_size))

    def _give_up(self, key: str, flight: _InFlight) -> None:
        with self._lock:
            flight.waiters -= 1
            abandoned = flight.waiters <= 0
            if abandoned and self._in_flight.get(key) is flight:
                del self._in_flight[key]  # A request arriving now submits afresh.
        if abandoned:
            flight.encoding.cancel()  # Still queued: the worker will skip it (and _store forgets it).


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
