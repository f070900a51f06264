"""``SAM_TEXT_MODEL``: which detector text prompts run on, found the way SAM's checkpoints are.

In order: a local folder (a ``save_pretrained`` model and processor); the hub id's files in the data dir's
``text-models/`` cache; a download of them at a pinned revision with a progress bar (unless
``SAM_ALLOW_DOWNLOAD=0``). When none can be had, a small seeded random detector of the same family stands in and
says so (``weights: "random"``), so the flow still runs and starts fast.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Protocol

from . import random_detector

logger = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "IDEA-Research/grounding-dino-tiny"
# Hub ids -> the revision downloaded, so a changed upstream repository never changes the boxes silently.
PINNED_REVISIONS = {
    "IDEA-Research/grounding-dino-tiny": "e08274d3760f8fcfc53dcbb9ca3ed0a29fa9c40e",
    "google/owlv2-base-patch16-ensemble": "cfd3195ba4ea9592eec887ded089f4c08eff231d",
}
# Only what from_pretrained reads: no pickles, no other frameworks' weights.
ALLOW_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]


class TextSettings(Protocol):
    """The settings this module reads (``backend.config.Config`` has them; the settings sit above this package)."""

    text_model: str
    text_revision: str | None
    text_bf16: bool
    data_dir: str
    allow_download: bool


class TextModelError(RuntimeError):
    """SAM_TEXT_MODEL names a folder or files that cannot be loaded."""


@dataclasses.dataclass(frozen=True)
class TextModelInfo:
    """What text prompts run on: ``model_id`` (cache keys), ``weights`` "real" or "random", ``message`` for the
    log and the page."""

    model_id: str
    weights: str
    family: str
    message: str


def _family_of(name: str) -> str:
    return "owlv2" if "owl" in name.lower() else "grounding-dino"


def _revision(config: TextSettings) -> str:
    return config.text_revision or PINNED_REVISIONS.get(config.text_model, "main")


def find_text_model(config: TextSettings) -> tuple[Path | None, str]:
    """The folder to load for ``config.text_model`` (downloading if allowed), or None with the reason why not."""
    name = config.text_model
    local = Path(name).expanduser()
    if local.is_dir():
        return local, ""
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise TextModelError(f"SAM_TEXT_MODEL={name} is neither a folder nor a hub id like owner/name")
    from huggingface_hub import snapshot_download

    cache = Path(config.data_dir) / "text-models"
    revision = _revision(config)
    try:  # Already downloaded: no network at all.
        return Path(snapshot_download(name, revision=revision, cache_dir=cache, local_files_only=True)), ""
    except Exception:
        pass
    if not config.allow_download:
        return None, f"{name} is not in {cache} and downloads are off (SAM_ALLOW_DOWNLOAD=0)"
    try:
        logger.info("downloading %s at %s to %s", name, revision, cache)
        # huggingface_hub draws a progress bar per file; an interrupted download resumes.
        return Path(snapshot_download(name, revision=revision, cache_dir=cache, allow_patterns=ALLOW_PATTERNS)), ""
    except Exception as error:
        return None, f"{name} could not be downloaded ({type(error).__name__}: {str(error)[:200]})"


def load_grounder(config: TextSettings):
    """``(TransformersGrounder, TextModelInfo)`` following the module docstring's order."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    from .detectors import TransformersGrounder

    folder, reason = find_text_model(config)
    bf16 = config.text_bf16
    if folder is not None:
        started = time.perf_counter()
        try:
            processor = AutoProcessor.from_pretrained(folder)
            model = _load_model(folder, AutoModelForZeroShotObjectDetection)
        except Exception as error:
            raise TextModelError(f"cannot load {folder} as a text detector: {error}") from None
        if Path(config.text_model).expanduser().is_dir():  # A folder: its files' age tells versions apart.
            newest = max((file.stat().st_mtime for file in folder.iterdir() if file.is_file()), default=0)
            model_id = f"{config.text_model}@{int(newest)}"
        else:
            model_id = f"{config.text_model}@{_revision(config)}"
        grounder = TransformersGrounder(model, processor, model_id=model_id, weights="real", bf16=bf16)
        info = TextModelInfo(model_id, "real", grounder.family, f"text prompts run {config.text_model}")
        logger.info("loaded text model %s in %.1f s", config.text_model, time.perf_counter() - started)
        return grounder, info

    family = _family_of(config.text_model)
    model, processor = random_detector.BUILDERS[family]()
    model_id = f"{family}-random-seed{random_detector.RANDOM_SEED}"
    message = (
        f"No real text-detector weights: {reason}. Text prompts run on a small seeded RANDOM {family} detector, so "
        f"the boxes are meaningless. Set SAM_TEXT_MODEL to a downloaded model folder, or allow the download."
    )
    logger.warning("%s", message)
    grounder = TransformersGrounder(model, processor, model_id=model_id, weights="random", bf16=bf16)
    return grounder, TextModelInfo(model_id, "random", family, message)


def _load_model(folder: Path, auto_class):
    """The detector in ``folder``: the zero-shot detection auto class knows Grounding DINO and OWLv2; SAM 3's
    concept model has its own class."""
    import json

    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type == "sam3":
        from transformers import Sam3Model

        return Sam3Model.from_pretrained(folder).eval()
    return auto_class.from_pretrained(folder).eval()
