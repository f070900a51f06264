"""The Sam module: image encoder + prompt encoder + mask decoder, with pre- and post-processing."""

import functools
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
        """ "fp32", "bf16" or "fp16": the dtype the image encoder computes in."""
        dtype = getattr(self.image_encoder, "autocast_dtype", None)
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]

    def set_precision(self, precision: str = "auto") -> str:
        """Choose the image encoder's compute dtype; returns the one chosen.

        "fp32" is the exact reference path. "auto" picks bf16 autocast on CPUs with native bf16 (AVX512-BF16 or
        AMX) and on CUDA (fp16 where the GPU lacks bf16), else fp32. Prompt encoder and decoder stay fp32.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "auto":
            precision = default_precision(self.device)
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.image_encoder.autocast_dtype = dtype
        return precision

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


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 matrix products natively (AVX512-BF16 or AMX-BF16).

    Without them oneDNN emulates bf16, which is slower than fp32, so the flag check matters.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def default_precision(device: torch.device) -> str:
    """The fastest encoder precision proven accurate enough on `device`: "bf16", "fp16" or "fp32"."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16() and torch.backends.mkldnn.is_available():
        return "bf16"
    return "fp32"
