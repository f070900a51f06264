"""Files written whole or not at all, and a lock that serialises processes writing the same files.

``atomic_write(path)`` yields a temporary path beside ``path`` and renames it over ``path`` only when the
block finishes, so a reader (another worker, a browser) never sees a half-written file; ``file_lock(path)``
holds an exclusive ``flock`` on ``path`` (no-op where ``fcntl`` does not exist: renames still keep files whole).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows has no flock.
    fcntl = None


@contextlib.contextmanager
def atomic_write(path: os.PathLike | str, *, mode: int | None = 0o644) -> Iterator[Path]:
    """Yields a temporary path in ``path``'s directory; on success it replaces ``path``, on error it is removed.

    ``mode``: the file's permissions (mkstemp makes files private; served files must be readable), or None to
    keep mkstemp's.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if mode is not None:
            os.chmod(tmp_name, mode)
        yield Path(tmp_name)
        os.replace(tmp_name, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


@contextlib.contextmanager
def file_lock(path: os.PathLike | str) -> Iterator[None]:
    """Holds an exclusive lock on the file ``path`` (created if missing) for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
