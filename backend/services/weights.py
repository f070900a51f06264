"""Checkpoints: where the official ones live, downloading them (progress, resume, size check), loading the model.

``load_model(config)`` picks, in order: the checkpoint named by ``SAM_CHECKPOINT``; the official file of
``SAM_MODEL_TYPE`` in the weights directory; a download of it (unless ``SAM_ALLOW_DOWNLOAD=0``). When none can
be had, the server still starts, on seeded random weights of the fastest model (vit_t), and says so in the log
and in ``/api/model`` together with the command that fetches real weights.
"""

from __future__ import annotations

import dataclasses
import http.client
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Protocol

from ..runtime.files import file_lock

logger = logging.getLogger(__name__)

RANDOM_SEED = 0
RANDOM_MODEL_TYPE = "vit_t"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    model_type: str
    url: str
    filename: str
    size: int | None  # None: not published; the size check is skipped.


CHECKPOINTS = {
    "vit_h": Checkpoint(
        "vit_h",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "sam_vit_h_4b8939.pth",
        2_564_550_879,
    ),
    "vit_l": Checkpoint(
        "vit_l",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "sam_vit_l_0b3195.pth",
        1_249_524_607,
    ),
    "vit_b": Checkpoint(
        "vit_b",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "sam_vit_b_01ec64.pth",
        375_042_383,
    ),
    "vit_t": Checkpoint(
        "vit_t", "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt", "mobile_sam.pt", None
    ),
}
CHECKPOINTS["default"] = CHECKPOINTS["vit_h"]

# Meta's SAM 2 releases: SAM 2.1 (September 2024) and SAM 2 (July 2024).
SAM2_RELEASES = {
    "sam2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/",
    "sam2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/",
}
# Byte sizes of Meta's files, from Git LFS pointers on Hugging Face whose SHA-256 is the one of Meta's own uploads
# (facebook/sam2-hiera-*, facebook/sam2.1-hiera-*) or is shared by independent mirrors of the release; the
# commit adding them names each source. sam2_hiera_small.pt's size was not found: its size check is skipped (the
# download still resumes and checks the length the server announces).
SAM2_SIZES = {
    "sam2.1_hiera_tiny.pt": 156_008_466,
    "sam2.1_hiera_small.pt": 184_416_285,
    "sam2.1_hiera_base_plus.pt": 323_606_802,
    "sam2.1_hiera_large.pt": 898_083_611,
    "sam2_hiera_tiny.pt": 155_906_050,
    "sam2_hiera_base_plus.pt": 323_493_298,
    "sam2_hiera_large.pt": 897_952_466,
}


def model_family(model_type: str) -> str:
    """ "sam2.1", "sam2" or "sam" (SAM 1 and MobileSAM) for a model type."""
    if model_type.startswith("sam2.1_"):
        return "sam2.1"
    if model_type.startswith("sam2_"):
        return "sam2"
    return "sam"


def _add_sam2_checkpoints() -> None:
    from ..sam2.build_sam import MODEL_FILES

    for model_type, (filename, _) in MODEL_FILES.items():
        url = SAM2_RELEASES[model_family(model_type)] + filename
        CHECKPOINTS[model_type] = Checkpoint(model_type, url, filename, SAM2_SIZES.get(filename))


_add_sam2_checkpoints()

# Every model type the server knows, SAM 1 first (one home: the builders' registries).
MODEL_TYPES: tuple[str, ...] = tuple(CHECKPOINTS)


def build_model(model_type: str, checkpoint: str | None = None):
    """The model of ``model_type`` in eval mode on the CPU, with ``checkpoint``'s weights (else random)."""
    if model_family(model_type) == "sam":
        from ..sam import sam_model_registry

        return sam_model_registry[model_type](checkpoint=checkpoint)
    from ..sam2 import build_sam2

    return build_sam2(model_type, checkpoint=checkpoint)


class WeightsError(RuntimeError):
    """A checkpoint could not be downloaded or loaded."""


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    """What the server runs on. ``weights``: "real" or "random"; ``weights_id`` names the exact weights (cache
    keys and exported decoders depend on it); ``message``: plain words for the log and the page."""

    model_type: str
    weights: str
    weights_id: str
    checkpoint: str | None
    message: str


def download_command(model_type: str) -> str:
    return f"python -m backend download-weights --model-type {model_type}"


def find_checkpoint(model_type: str, weights_dir: Path) -> Path | None:
    """The complete official checkpoint of ``model_type`` in ``weights_dir``, if there."""
    checkpoint = CHECKPOINTS[model_type]
    path = Path(weights_dir) / checkpoint.filename
    if not path.is_file():
        return None
    if checkpoint.size is not None and path.stat().st_size != checkpoint.size:
        logger.warning("ignoring %s: %d bytes, expected %d", path, path.stat().st_size, checkpoint.size)
        return None
    return path


def download(
    url: str,
    destination: Path,
    expected_size: int | None = None,
    *,
    timeout_s: float = 10.0,
    progress: IO[str] | None = sys.stderr,
    chunk_size: int = 1 << 20,
) -> Path:
    """Downloads ``url`` to ``destination``, resuming a previous ``.part`` file with an HTTP Range request.

    ``timeout_s`` bounds connecting and each read (an offline machine fails fast). With ``expected_size`` the
    finished file must have exactly that many bytes, else it is deleted and ``WeightsError`` raised. A lock
    file keeps concurrently starting workers from writing the same file.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(destination.with_name(destination.name + ".lock")):
        if destination.is_file() and (expected_size is None or destination.stat().st_size == expected_size):
            return destination
        part = destination.with_name(destination.name + ".part")
        offset = part.stat().st_size if part.is_file() else 0
        if expected_size is not None and offset > expected_size:
            part.unlink()
            offset = 0
        request = urllib.request.Request(url, headers={"User-Agent": "sam-web-weights/1"})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            response = urllib.request.urlopen(request, timeout=timeout_s)
        except urllib.error.HTTPError as error:
            if error.code == 416 and offset and (expected_size is None or offset == expected_size):
                os.replace(part, destination)  # The part file was already complete.
                return destination
            raise WeightsError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise WeightsError(f"cannot reach {url}: {reason}") from None
        with response:
            if offset and response.status != 206:
                offset = 0  # The server ignored the Range header: start over.
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else expected_size
            bar = _ProgressBar(destination.name, total, offset, progress)
            try:
                with open(part, "ab" if offset else "wb") as file:
                    while True:
                        chunk = response.read(chunk_size)
                        if not chunk:
                            break
                        file.write(chunk)
                        bar.advance(len(chunk))
            except (OSError, http.client.HTTPException) as error:
                raise WeightsError(
                    f"download of {url} stopped after {part.stat().st_size:,} bytes ({error}); run the same command again to resume"
                ) from None
            finally:
                bar.close()
        size = part.stat().st_size
        if total is not None and size < total:
            raise WeightsError(
                f"download of {url} stopped after {size:,} of {total:,} bytes; run the same command again to resume"
            )
        if expected_size is not None and size != expected_size:
            part.unlink()
            raise WeightsError(
                f"downloaded {size:,} bytes from {url} but the file should have {expected_size:,}; deleted it"
            )
        os.replace(part, destination)
        return destination


class WeightsSettings(Protocol):
    """The settings this module reads (``backend.config.Config`` has them; the settings sit above the services)."""

    canonical_model_type: str
    checkpoint: str | None
    resolved_weights_dir: Path
    allow_download: bool


def download_checkpoint(model_type: str, weights_dir: Path, **kwargs) -> Path:
    checkpoint = CHECKPOINTS[model_type]
    return download(checkpoint.url, Path(weights_dir) / checkpoint.filename, checkpoint.size, **kwargs)


def ensure_checkpoint(config: WeightsSettings) -> tuple[Path | None, str]:
    """The checkpoint to load for ``config`` (downloading if allowed), or None with the reason why not."""
    model_type = config.canonical_model_type
    if config.checkpoint:
        path = Path(config.checkpoint).expanduser()
        if not path.is_file():
            raise WeightsError(f"SAM_CHECKPOINT={config.checkpoint} does not exist or is not a file")
        return path, ""
    weights_dir = config.resolved_weights_dir
    found = find_checkpoint(model_type, weights_dir)
    if found is not None:
        return found, ""
    if not config.allow_download:
        return None, f"no {model_type} checkpoint in {weights_dir} and downloads are off (SAM_ALLOW_DOWNLOAD=0)"
    try:
        return download_checkpoint(model_type, weights_dir), ""
    except WeightsError as error:
        logger.warning("%s", error)
        return None, f"no {model_type} checkpoint in {weights_dir} and the download failed ({error})"


def random_model_type(model_type: str = RANDOM_MODEL_TYPE) -> str:
    """The model served on random weights when ``model_type`` has none: the fastest of its family."""
    family = model_family(model_type)
    return RANDOM_MODEL_TYPE if family == "sam" else f"{family}_hiera_t"


def random_model(model_type: str = RANDOM_MODEL_TYPE):
    """``random_model_type(model_type)`` with weights drawn from a fixed seed (the global RNG is left as it was)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build_model(random_model_type(model_type))


def load_model(config: WeightsSettings):
    """Returns ``(model on the CPU, WeightsInfo)`` following the order in the module docstring (a ``Sam``, or a
    ``SAM2Base`` for the SAM 2 types)."""
    model_type = config.canonical_model_type
    path, reason = ensure_checkpoint(config)
    if path is not None:
        started = time.perf_counter()
        try:
            model = build_model(model_type, checkpoint=str(path))
        except Exception as error:
            raise WeightsError(f"cannot load {path} as a {model_type} checkpoint: {error}") from None
        stat = path.stat()
        info = WeightsInfo(
            model_type=model_type,
            weights="real",
            weights_id=f"{model_type}-{path.name}-{stat.st_size}-{int(stat.st_mtime)}",
            checkpoint=str(path),
            message=f"{model_type} weights from {path.name}",
        )
        logger.info("loaded %s from %s in %.1f s", model_type, path, time.perf_counter() - started)
        return model, info

    wanted = model_type
    served = random_model_type(model_type)
    message = (
        f"No real SAM weights: {reason}. Running on seeded RANDOM {served} weights, so masks are "
        f"meaningless. To get real weights run `{download_command(wanted)}` and restart the server "
        f"(or set SAM_CHECKPOINT to a checkpoint file)."
    )
    logger.warning("%s", message)
    return random_model(model_type), WeightsInfo(
        model_type=served,
        weights="random",
        weights_id=f"{served}-random-seed{RANDOM_SEED}",
        checkpoint=None,
        message=message,
    )


class _ProgressBar:
    """A one-line progress bar on a terminal; a line per 10% elsewhere (logs)."""

    def __init__(self, name: str, total: int | None, done: int, stream: IO[str] | None) -> None:
        self.name, self.total, self.done, self.stream = name, total, done, stream
        self.started = time.monotonic()
        self.start_bytes = done
        self.is_tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self.last_decile = -1
        self.last_draw = 0.0
        if stream is not None and done:
            stream.write(f"resuming {name} at {done / 1e6:.1f} MB\n")

    def advance(self, count: int) -> None:
        self.done += count
        if self.stream is None:
            return
        now = time.monotonic()
        if self.is_tty:
            if now - self.last_draw >= 0.1 or (self.total and self.done >= self.total):
                self.last_draw = now
                self.stream.write("\r" + self._line(now))
                self.stream.flush()
        elif self.total:
            decile = int(10 * self.done / self.total)
            if decile > self.last_decile:
                self.last_decile = decile
                self.stream.write(self._line(now) + "\n")

    def close(self) -> None:
        if self.stream is not None:
            if self.is_tty:
                self.stream.write("\r" + self._line(time.monotonic()) + "\n")
            self.stream.flush()

    def _line(self, now: float) -> str:
        speed = (self.done - self.start_bytes) / max(now - self.started, 1e-6) / 1e6
        if self.total:
            fraction = min(1.0, self.done / self.total)
            filled = int(30 * fraction)
            return (
                f"{self.name} [{'#' * filled}{'.' * (30 - filled)}] {100 * fraction:5.1f}% "
                f"{self.done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB {speed:.1f} MB/s"
            )
        return f"{self.name} {self.done / 1e6:,.1f} MB {speed:.1f} MB/s"
