"""Bounded decoding memory: a process-wide budget of pixels being decoded, and handing freed memory back.

``PixelBudget.reserve(pixels)`` holds part of the budget while an upload is decoded (the header's pixel
count, before a pixel is decoded) and raises ``OverBudget`` when the budget stays full. Handing freed memory
back to the system is ``backend.runtime.heap``'s job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)


class OverBudget(RuntimeError):
    """The decoding budget is in use; ``retry_after`` is a suggested wait in whole seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PixelBudget:
    """At most ``max_pixels`` pixels being decoded at once across the process's request threads.

    One request may always reserve up to the whole budget (so any image under the per-image cap decodes when
    it is alone); ``wait_s`` is how long a request waits for room before ``OverBudget``.
    """

    def __init__(self, max_pixels: int, wait_s: float = 1.0) -> None:
        self.max_pixels = int(max_pixels)
        self.wait_s = float(wait_s)
        self.in_use = 0
        self.peak = 0
        self.refused = 0
        self._room = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        pixels = min(int(pixels), self.max_pixels)
        with self._room:
            if not self._room.wait_for(lambda: self.in_use + pixels <= self.max_pixels, timeout=self.wait_s):
                self.refused += 1
                raise OverBudget(
                    f"the server is decoding {self.in_use:,} pixels of other uploads (budget "
                    f"{self.max_pixels:,}, SAM_DECODE_PIXELS); try again shortly",
                    retry_after=2,
                )
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._room:
                self.in_use -= pixels
                self._room.notify_all()

    def stats(self) -> dict:
        return {"in_use": self.in_use, "max_pixels": self.max_pixels, "peak": self.peak, "refused": self.refused}
