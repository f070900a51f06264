"""The model side of encoding: choosing the device, preparing the model, one batched forward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

# (embedding float32 [256, 64, 64], input_size (h, w)) for each image of a batch.
EncodedBatch = list[tuple[np.ndarray, tuple[int, int]]]
BatchEncoder = Callable[[Sequence[np.ndarray]], EncodedBatch]


# Sam.image_size of every model type: images are resized to this longest side before encoding.
INPUT_SIDE = 1024


class DeviceError(ValueError):
    """The configured device does not exist on this machine."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; explicit CUDA devices are checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"SAM_DEVICE={name} but this machine has no usable CUDA device; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"SAM_DEVICE={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def prepare_model(
    model: torch.nn.Module, device: torch.device, precision: str = "auto", cache_dir: str | None = None
) -> str:
    """Moves ``model`` to ``device`` in eval mode and sets its encoder path; returns the precision chosen.

    ``auto`` lets the model pick the fastest path within the accuracy bound on this device (``Sam.set_precision``,
    ``backend.runtime.encoder_paths``): bf16 / fp16 on CUDA and on CPUs with native bf16; on other CPUs int8, fused or
    fp32 as measured once (per encoder, see ``encoder_paths.candidates``), the measurement cached in
    ``cache_dir``; else fp32.
    """
    model.to(device)
    model.eval()
    set_precision = getattr(model, "set_precision", None)
    if set_precision is None:
        return "fp32"
    return set_precision(precision, cache_dir=cache_dir)


def encode_images(model: torch.nn.Module, images: Sequence[np.ndarray]) -> EncodedBatch:
    """Encodes uint8 RGB images [H, W, 3] (any sizes) in one forward pass of ``model.image_encoder``.

    Same preprocessing as ``SamPredictor.set_image``: resize longest side to the model's image size, normalise,
    zero-pad bottom/right. Returns float32 [256, 64, 64] embeddings on the CPU with each resized (h, w).
    """
    from ..sam.transforms import ResizeLongestSide

    transform = ResizeLongestSide(model.image_size)
    device = model.device
    inputs, input_sizes = [], []
    for image in images:
        resized = transform.apply_image(np.ascontiguousarray(image))
        tensor = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)
        if device.type == "cuda":
            tensor = tensor.pin_memory()
        inputs.append(model.preprocess(tensor.to(device, non_blocking=True).float()))
        input_sizes.append((int(resized.shape[0]), int(resized.shape[1])))
    with torch.inference_mode():
        embeddings = model.image_encoder(torch.stack(inputs, dim=0))
    embeddings = embeddings.float().cpu().numpy()
    return [(np.ascontiguousarray(embeddings[i]), input_sizes[i]) for i in range(len(images))]
