"""Tiny random text detectors saved to folders (each a ``SAM_TEXT_MODEL``), built offline from ``transformers``
configs with tokenizers over vocabularies written here; shared by the text tests (session scope: built once)."""

from pathlib import Path

import numpy as np
import pytest

# Small inputs keep each detection well under a second on two shared cores.
GROUNDING_DINO_IMAGE_SIZE = 160
OWLV2_IMAGE_SIZE = 64


def build_text_model(folder: Path, family: str) -> Path:
    pytest.importorskip("transformers", reason="text prompts need the .[text] extra")
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


def transformers_boxes(folder, pixels, phrases, params):
    """What transformers itself answers: its processor, model and post-processing, best first, clipped."""
    import torch
    from PIL import Image
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval()
    image = Image.fromarray(pixels)
    size = [(image.height, image.width)]
    if model.config.model_type == "grounding-dino":
        inputs = processor(images=image, text=". ".join(phrases) + ".", return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        (result,) = processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=params.box_threshold,
            text_threshold=params.text_threshold,
            target_sizes=size,
        )
    else:
        inputs = processor(images=image, text=[phrases], truncation=True, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        (result,) = processor.post_process_grounded_object_detection(
            outputs, threshold=params.box_threshold, target_sizes=size
        )
    order = torch.argsort(result["scores"], descending=True, stable=True)
    boxes = result["boxes"][order]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image.width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image.height)
    return boxes.numpy(), result["scores"][order].numpy()
