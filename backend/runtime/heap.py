"""glibc's malloc settings: the process's defaults (``tune``), giving freed memory back (``trim``), and a scope
in which large freed buffers are kept for reuse (``reused_large_buffers``).

Why the scope: torch allocates each tensor with malloc, and glibc serves a large one (over its mmap threshold)
with a fresh mmap and unmaps it on free, so the kernel zero-fills every page of the next one again. A batch of
64 prompts in everything mode allocates [64, 4096, 256] image tensors (268 MB) a dozen times per batch: without
reuse 40 MB of new pages per prompt, ~30 % of the decoder's CPU time in page faults (sys time). Inside the scope
such buffers come from the heap and are reused; leaving it restores the settings and trims the heap.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# What leaving the scope restores when tune() was not called: the largest mmap threshold glibc's own dynamic
# setting grows to on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX), and its trim threshold (twice that).
_DYNAMIC_MAX = 32 << 20
_INT_MAX = 2**31 - 1


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
_lock = threading.Lock()
_settings = {"mmap_threshold": _DYNAMIC_MAX, "trim_threshold": 2 * _DYNAMIC_MAX}
_scopes = 0


def tune(arenas: int, mmap_threshold: int) -> bool:
    """Sets the process's arena count and a fixed mmap threshold; returns whether glibc took them."""
    if _LIBC is None:
        return False
    with _lock:
        ok = _LIBC.mallopt(_M_ARENA_MAX, int(arenas)) == 1
        # A fixed mmap threshold stops glibc adjusting both thresholds: the trim threshold stays at its 128 KiB.
        _settings.update(mmap_threshold=int(mmap_threshold), trim_threshold=128 << 10)
        if _scopes == 0:
            ok = _LIBC.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1 and ok
        return ok


def trim() -> None:
    """Returns the free memory of glibc's heaps to the system."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


@contextlib.contextmanager
def reused_large_buffers() -> Iterator[None]:
    """Inside: large buffers come from the heap and freed ones stay there for the next allocation. Scopes
    may nest and overlap across threads; the last one out restores the settings and trims the heap."""
    global _scopes
    if _LIBC is None:
        yield
        return
    with _lock:
        _scopes += 1
        if _scopes == 1:
            _LIBC.mallopt(_M_MMAP_THRESHOLD, _INT_MAX)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)
    try:
        yield
    finally:
        with _lock:
            _scopes -= 1
            if _scopes == 0:
                _LIBC.mallopt(_M_MMAP_THRESHOLD, _settings["mmap_threshold"])
                _LIBC.mallopt(_M_TRIM_THRESHOLD, _settings["trim_threshold"])
                _LIBC.malloc_trim(0)
