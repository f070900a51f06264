"""
The fast browser decoder for SAM 2: backend.sam2.folded_decoder behind the public SAM 2 inputs, low-res logits out.

Inputs as sam2_model.py's official graph (image_embed, high_res_feats_0, high_res_feats_1, point_coords,
point_labels, mask_input, has_mask_input); outputs iou_predictions [1, 4] and low_res_masks [1, 4, 256, 256]
(token 0 the single mask, 1..3 the candidates), as SAM 1's lowres graph. The client upsamples and applies the
single-mask stability fallback. The logits are not clamped, so an upsampled mask equals SAM2ImagePredictor's
(which upsamples before it clamps); the +/-32 clamp is applied to the mask input instead, which gives the same
mask prompt as feeding back the predictor's clamped logits.
"""

from pathlib import Path

import torch
import torch.nn as nn

from backend.sam.folded_decoder import ALL_MASKS, pixel_rows
from backend.sam2.folded_decoder import Sam2FoldedMaskDecoder
from backend.sam2.sam2_image_predictor import LOW_RES_LOGIT_LIMIT

from .export import trace_to_onnx
from .onnx_model import PromptEmbedder, SamDecoderParts
from .sam2_model import sam2_decoder_parts, sam2_example_inputs

SAM2_LOWRES_OUTPUT_NAMES = ("iou_predictions", "low_res_masks")


class SAM2LowResOnnxModel(nn.Module):
    """Prompt embedding + SAM 2's mask decoder computed the folded way (module docstring)."""

    def __init__(self, model: SamDecoderParts) -> None:
        super().__init__()
        self.decoder = Sam2FoldedMaskDecoder(model.mask_decoder)
        self.prompts = PromptEmbedder(model.prompt_encoder, model.image_size)

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse_embedding = self.prompts.embed_points(point_coords, point_labels)
        mask_input = torch.clamp(mask_input, -LOW_RES_LOGIT_LIMIT, LOW_RES_LOGIT_LIMIT)
        dense_embedding = self.prompts.embed_masks(mask_input, has_mask_input)
        _, _, height, width = image_embed.shape
        # Computed in the graph from the prompt encoder's frequencies (folded once per session), as SAM 1's.
        image_pe = self.prompts.prompt_encoder.get_dense_pe_rows()
        tokens, image_tokens = self.decoder(pixel_rows(image_embed + dense_embedding), image_pe, sparse_embedding)
        iou_predictions = self.decoder.predict_iou(tokens, ALL_MASKS)
        hyper_in = self.decoder.hypernetworks(tokens, ALL_MASKS)
        image_rows = image_tokens if image_tokens.dim() == 2 else image_tokens[0]
        high_res_features = [high_res_feats_0, high_res_feats_1]
        low_res_masks = self.decoder.upscale(image_rows, hyper_in[0], height, width, high_res_features)
        return iou_predictions, low_res_masks.unsqueeze(0)


def export_sam2_lowres_decoder(model: nn.Module, output: str | Path, opset: int = 17) -> Path:
    """Writes the lowres decoder of `model` (a SAM2Base) to `output` (one ONNX file, atomically); only the number
    of points is dynamic, and the mask-prompt branch is skipped without a mask (model_export/mask_branch.py)."""
    output = Path(output)
    parts = sam2_decoder_parts(model)
    wrapper = SAM2LowResOnnxModel(parts).eval()
    inputs = sam2_example_inputs()
    dynamic_axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    no_mask = parts.prompt_encoder.no_mask_embed.weight.detach().reshape(1, -1, 1, 1).numpy()
    trace_to_onnx(
        wrapper,
        inputs,
        output,
        list(SAM2_LOWRES_OUTPUT_NAMES),
        dynamic_axes,
        opset,
        no_mask_embedding=no_mask,
        embedding_input="image_embed",
    )
    return output
