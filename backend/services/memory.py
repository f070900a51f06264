"""Bounded decoding memory: a process-wide budget of pixels being decoded, and handing freed memory back.

``PixelBudget.reserve(pixels)`` holds part of the budget while an upload is decoded (the header's pixel
count, before a pixel is decoded) and raises ``OverBudget`` when the budget stays full; ``tune_malloc()``
and ``release_memory()`` keep glibc from sitting on what a burst of large images freed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Iterator

logger = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


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


def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018  # glibc only: musl and others lack them.
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def tune_malloc(arenas: int = 2, mmap_threshold: int = 1 << 20) -> bool:
    """Fewer malloc arenas (glibc makes up to 8 per core, each keeping its own freed memory) and a fixed mmap
    threshold, so buffers of a megabyte or more (decoded images, embeddings) go straight back to the system
    when freed. Returns whether glibc took the settings. Call it early in the process (gunicorn post_fork)."""
    if _LIBC is None:
        return False
    ok = _LIBC.mallopt(_M_ARENA_MAX, int(arenas)) == 1
    return _LIBC.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1 and ok


def release_memory() -> None:
    """Returns the free memory at the top of glibc's heaps to the system (after a large decode)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
