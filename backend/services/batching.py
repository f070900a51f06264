"""The local ``ImageEncoder``: a bounded queue in front of one worker thread that runs batched forward passes.

All forward passes run on the worker, so the model is never used by two encodes at once; requests from any
number of threads queue up for it, and whatever is waiting when the worker becomes free (up to
``max_batch_size`` images) goes through the model as one batch.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import queue
import threading
import time

import numpy as np

from .interfaces import EncodedImage, EncoderBusy, EncoderClosed
from .model_runner import BatchEncoder

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Job:
    pixels: np.ndarray | None
    future: concurrent.futures.Future[EncodedImage]


class BatchQueue:
    """Encodes submitted images in batches with ``encode_batch`` (a forward pass over a list of images).

    ``max_batch_size``: images per forward pass; ``max_queue_size``: images waiting, beyond it ``submit``
    raises ``EncoderBusy``; ``batch_window_s``: how long the worker waits for company after the first image
    of an idle period.
    """

    def __init__(
        self,
        encode_batch: BatchEncoder,
        *,
        max_batch_size: int = 4,
        max_queue_size: int = 8,
        batch_window_s: float = 0.005,
    ) -> None:
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_queue_size = max(1, int(max_queue_size))
        self.batch_window_s = float(batch_window_s)
        self._encode_batch = encode_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=self.max_queue_size)
        self._lock = threading.Lock()
        self._closed = False
        # Statistics (read by /healthz and by tests).
        self.batches = 0
        self.images_encoded = 0
        self.largest_batch = 0
        self.encoding = 0  # Images in the forward pass running now.
        self._seconds_per_image = 1.0
        self._worker = threading.Thread(target=self._run, name="sam-encoder", daemon=True)
        self._worker.start()

    def submit(self, pixels: np.ndarray) -> concurrent.futures.Future[EncodedImage]:
        job = _Job(pixels, concurrent.futures.Future())
        with self._lock:
            if self._closed:
                raise EncoderClosed("the encoder is shut down")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise EncoderBusy(
                    f"the encoder queue is full ({self.max_queue_size} images waiting); try again shortly",
                    self.retry_after(),
                ) from None
        return job.future

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def retry_after(self) -> int:
        """Seconds a turned-away client should wait: roughly the time to drain the queue."""
        return max(1, math.ceil((self._queue.qsize() + 1) * self._seconds_per_image))

    def stats(self) -> dict:
        return {
            "queue_depth": self.queue_depth,
            "queue_size": self.max_queue_size,
            "encoding": self.encoding,
            "max_batch_size": self.max_batch_size,
            "batches": self.batches,
            "images_encoded": self.images_encoded,
            "largest_batch": self.largest_batch,
        }

    def close(self, timeout_s: float = 5.0) -> None:
        """Stops the worker; queued images are cancelled (their futures raise ``CancelledError``)."""
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
                self.encoding = len(live)
                try:
                    self._encode_and_deliver(live)
                finally:
                    self.encoding = 0

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
            live[0].pixels = None
            live[0].future.set_exception(error)
            return
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        self.batches += 1
        self.images_encoded += len(live)
        self.largest_batch = max(self.largest_batch, len(live))
        self._seconds_per_image = 0.7 * self._seconds_per_image + 0.3 * (elapsed_ms / 1000 / len(live))
        logger.info("encoded %d image(s) in %.0f ms", len(live), elapsed_ms)
        for job, (embedding, input_size) in zip(live, encoded, strict=True):
            job.pixels = None  # Free the image as soon as possible.
            size = (int(input_size[0]), int(input_size[1]))
            job.future.set_result(EncodedImage(embedding, size, elapsed_ms, len(live)))
