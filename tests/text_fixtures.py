"""Tiny random text detectors saved to folders (each a ``SAM_TEXT_MODEL``), built offline from ``transformers``
configs with tokenizers over vocabularies written here; shared by the text tests (session scope: built once)."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers", reason="text prompts need the .[text] extra")

# Small inputs keep each detection well under a second on two shared cores.
GROUNDING_DINO_IMAGE_SIZE = 160
OWLV2_IMAGE_SIZE = 64


def build_text_model(folder: Path, family: str) -> Path:
    from backend.text import random_detector

    size = GROUNDING_DINO_IMAGE_SIZE if family == "grounding-dino" else OWLV2_IMAGE_SIZE
    return random_detector.save(folder, family, image_size=size)


@pytest.fixture(scope="session")
def grounding_dino_folder(tmp_path_factory) -> Path:
    return build_text_model(tmp_path_factory.mktemp("grounding-dino"), "grounding-dino")


@pytest.fixture(scope="session")
def owlv2_folder(tmp_path_factory) -> Path:
    return build_text_model(tmp_path_factory.mktemp("owlv2"), "owlv2")


def textured_image(height: int = 180, width: int = 240, seed: int = 0) -> np.ndarray:
    """Noise over a few bright rectangles: something for a random detector to disagree about."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
    pixels[30:110, 40:120] = (220, 40, 40)
    pixels[100:160, 150:220] = (40, 200, 60)
    return pixels
