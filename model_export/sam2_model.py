"""The SAM 2 decoder as an ONNX graph, with the interface of the public SAM 2 ONNX decoders.

Inputs: image_embed [1, 256, 64, 64] (no_mem_embed added), high_res_feats_0 [1, 32, 256, 256] and
high_res_feats_1 [1, 64, 128, 128] (already projected by conv_s0 / conv_s1), point_coords [1, N, 2] in the
1024 x 1024 frame (x * 1024 / W, y * 1024 / H; box corners as points labelled 2 and 3), point_labels [1, N]
(1, 0, -1 padding, 2, 3), mask_input [1, 1, 256, 256], has_mask_input [1].
Outputs: masks [1, 4, 256, 256] logits of all four mask tokens (token 0 the single mask, 1..3 the candidates),
iou_predictions [1, 4] (sigmoid), low_res_masks [1, 4, 256, 256] the same logits clamped to +/-32, ready to feed
back as mask_input. The single-mask stability fallback and the resize to the image are left to the caller
(SAM2ImagePredictor's maths: MaskDecoder._dynamic_multimask_via_stability, SAM2Transforms.postprocess_masks).
"""

import types
from pathlib import Path

import torch
import torch.nn as nn

from backend.sam2.sam2_image_predictor import LOW_RES_LOGIT_LIMIT

from .export import trace_to_onnx
from .onnx_model import PromptEmbedder, SamDecoderParts

SAM2_INPUT_NAMES = (
    "image_embed",
    "high_res_feats_0",
    "high_res_feats_1",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
)
SAM2_OUTPUT_NAMES = ("masks", "iou_predictions", "low_res_masks")


def sam2_decoder_parts(model: nn.Module) -> SamDecoderParts:
    """Float32 CPU copies of a SAM2Base's prompt encoder and mask decoder, in SamDecoderParts' fields."""
    return SamDecoderParts(
        types.SimpleNamespace(
            prompt_encoder=model.sam_prompt_encoder, mask_decoder=model.sam_mask_decoder, mask_threshold=0.0
        )
    )


class SAM2OnnxModel(nn.Module):
    """Prompt embedding + SAM 2 mask decoder of a float32 CPU copy of `model` (a SAM2Base)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        parts = sam2_decoder_parts(model)
        self.mask_decoder = parts.mask_decoder
        self.prompts = PromptEmbedder(parts.prompt_encoder, parts.image_size)

    @torch.no_grad()
    def forward(
        self,
        image_embed: torch.Tensor,
        high_res_feats_0: torch.Tensor,
        high_res_feats_1: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse_embedding = self.prompts.embed_points(point_coords, point_labels)
        dense_embedding = self.prompts.embed_masks(mask_input, has_mask_input)
        masks, iou_predictions, _, _ = self.mask_decoder.predict_masks(
            image_embeddings=image_embed,
            image_pe=self.prompts.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse_embedding,
            dense_prompt_embeddings=dense_embedding,
            high_res_features=[high_res_feats_0, high_res_feats_1],
        )
        return masks, iou_predictions, torch.clamp(masks, -LOW_RES_LOGIT_LIMIT, LOW_RES_LOGIT_LIMIT)


def sam2_example_inputs(num_points: int = 3) -> dict[str, torch.Tensor]:
    """Random inputs with the decoder's shapes."""
    generator = torch.Generator().manual_seed(0)
    return {
        "image_embed": torch.randn(1, 256, 64, 64, generator=generator),
        "high_res_feats_0": torch.randn(1, 32, 256, 256, generator=generator),
        "high_res_feats_1": torch.randn(1, 64, 128, 128, generator=generator),
        "point_coords": torch.randint(0, 1024, (1, num_points, 2), generator=generator).to(torch.float32),
        "point_labels": torch.randint(0, 4, (1, num_points), generator=generator).to(torch.float32),
        "mask_input": torch.randn(1, 1, 256, 256, generator=generator),
        "has_mask_input": torch.tensor([1], dtype=torch.float32),
    }


def export_sam2_decoder(model: nn.Module, output: str | Path, opset: int = 17) -> Path:
    """Writes the SAM 2 decoder of `model` to `output` (one ONNX file, written atomically); only the number of
    points is dynamic."""
    output = Path(output)
    wrapper = SAM2OnnxModel(model).eval()
    inputs = sam2_example_inputs()
    dynamic_axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    trace_to_onnx(wrapper, inputs, output, list(SAM2_OUTPUT_NAMES), dynamic_axes, opset)
    return output
