"""The Sam module: image encoder + prompt encoder + mask decoder, with pre- and post-processing."""

import logging
import os
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime import encoder_paths
from ..runtime.encoder_paths import PRECISIONS
from . import fused_kernels
from .int8_linear import Int8Linear, int8_supported, keep_float_for, quantize_linears, restore_linears
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

logger = logging.getLogger(__name__)


class Sam(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53),
        pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375),
    ) -> None:
        """image_encoder maps [B, 3, 1024, 1024] to [B, 256, 64, 64]; pixel_mean/std are on the 0-255 scale."""
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # Not persistent: official checkpoints do not hold them.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def precision(self) -> str:
        """ "fp32", "fused", "int8", "bf16" or "fp16": how the image encoder computes (``encoder_paths.LABELS``)."""
        if any(isinstance(m, Int8Linear) for m in self.image_encoder.modules()):
            return "int8"
        if any(isinstance(m, fused_kernels.FUSED_MODULES) for m in self.image_encoder.modules()):
            return "fused"
        dtype = getattr(self.image_encoder, "autocast_dtype", None)
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]

    @property
    def encoder_path(self) -> str:
        """The path in use in words, e.g. "int8 linear + fused attention"."""
        return encoder_paths.LABELS[self.precision]

    def set_precision(self, precision: str = "auto", cache_dir: str | os.PathLike | None = None) -> str:
        """Choose how the image encoder computes; returns the precision chosen ("fp32", "fused", "int8", "bf16", "fp16").

        "fp32" is the exact reference path. "fused": float32 with oneDNN's fused convolution / linear + GELU
        kernels (CPU only; ``fused_kernels``). "int8": int8 Linear layers (CPU only; ``int8_linear``; which ones
        depends on the encoder, the rest runs as in "fused"). "bf16" /
        "fp16": autocast. "auto": the fastest path within the accuracy bound on this device
        (``encoder_paths.choose``: from capabilities, else measured once and cached in ``cache_dir``); the
        decision is logged and kept in ``self.precision_choice``. Prompt encoder and decoder stay fp32.
        Call again after loading new weights (the int8 path quantizes the weights it finds).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        choice = None
        if precision == "auto":
            choice = encoder_paths.auto_choice(self, cache_dir)
            logger.info("encoder path: %s (SAM_PRECISION=auto; %s)", choice.label, choice.reason)
            precision = choice.precision
        self._apply_precision(precision)
        self.precision_choice = choice or encoder_paths.Choice(precision, "set explicitly")
        return precision

    def _apply_precision(self, precision: str) -> None:
        encoder = self.image_encoder
        restore_linears(encoder)
        fused_kernels.unfuse(encoder)
        encoder.autocast_dtype = None
        if precision == "fused":
            if self.device.type != "cpu" or not fused_kernels.fused_supported():
                raise ValueError(f"precision fused needs a CPU and a torch with oneDNN, not {self.device}")
            fused_kernels.fuse(encoder)
        elif precision == "int8":
            if self.device.type != "cpu" or not int8_supported():
                raise ValueError(f"precision int8 needs a CPU and a torch with a quantized engine, not {self.device}")
            quantize_linears(encoder, full_range=encoder_paths.detect("cpu").vnni, keep_float=keep_float_for(encoder))
            if fused_kernels.fused_supported():
                fused_kernels.fuse(encoder)  # the float32 rest of TinyViT; vit_b: in-place GELUs
        elif precision != "fp32":
            encoder.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    @torch.inference_mode()
    def forward(self, batched_input: list[dict[str, Any]], multimask_output: bool) -> list[dict[str, torch.Tensor]]:
        """End-to-end prediction for a list of already transformed images with prompts.

        Each input dict holds "image" [3, H, W] (longest side 1024), "original_size" (H, W) and optionally
        "point_coords" [B, N, 2], "point_labels" [B, N], "boxes" [B, 4], "mask_inputs" [B, 1, 256, 256].
        Each output dict holds "masks" [B, K, H, W] (bool), "iou_predictions" [B, K], "low_res_logits".
        """
        input_images = torch.stack([self.preprocess(x["image"]) for x in batched_input], dim=0)
        image_embeddings = self.image_encoder(input_images)

        outputs = []
        for record, embedding in zip(batched_input, image_embeddings, strict=True):
            points = None
            if "point_coords" in record:
                points = (record["point_coords"], record["point_labels"])
            sparse, dense = self.prompt_encoder(
                points=points, boxes=record.get("boxes", None), masks=record.get("mask_inputs", None)
            )
            low_res_masks, iou_predictions = self.mask_decoder(
                image_embeddings=embedding.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(
                low_res_masks, input_size=record["image"].shape[-2:], original_size=record["original_size"]
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou_predictions,
                    "low_res_logits": low_res_masks,
                }
            )
        return outputs

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Low-res logits [B, K, 256, 256] -> logits [B, K, H, W] of the original image.

        Upsample to the padded encoder frame, drop the padding (input_size = resized image size), then resize
        to original_size; all bilinear with half-pixel centres (align_corners=False).
        """
        size = self.image_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(int(s) for s in original_size), mode="bilinear", align_corners=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[3, h, w] or [B, 3, h, w] RGB on 0-255 -> normalised and zero-padded to [.., 3, 1024, 1024]."""
        x = (x - self.pixel_mean) / self.pixel_std
        height, width = x.shape[-2:]
        size = self.image_size
        return F.pad(x, (0, size - width, 0, size - height))


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 matrix products natively (AVX512-BF16 or AMX-BF16; see encoder_paths)."""
    return encoder_paths.detect("cpu").native_bf16


def default_precision(device: torch.device) -> str:
    """The path the capabilities of `device` settle without a measurement: "bf16", "fp16" or the fp32 floor."""
    device = torch.device(device)
    paths = encoder_paths.candidates(encoder_paths.detect(device.type), "")
    return paths[0] if len(paths) == 1 else paths[-1]
