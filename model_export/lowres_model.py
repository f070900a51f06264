"""The fast browser decoder for export: backend.sam.folded_decoder behind the ONNX inputs, low-res logits out."""

import numpy as np
import torch
import torch.nn as nn

from backend.sam.folded_decoder import ALL_MASKS, FirstBlockProducts, FoldedMaskDecoder

from .onnx_model import PromptEmbedder, SamDecoderParts
from .per_image_outputs import CACHED_PREFIX

# Outputs that depend on the image alone (FirstBlockProducts' fields), fed back as inputs "cached_<name>"
# (per_image_outputs.py).
PER_IMAGE_OUTPUTS = tuple(f"first_block_{field}" for field in FirstBlockProducts._fields)
# The upscaling runs in this many blocks of token rows (FoldedMaskDecoder.upscale_batch): a full-extent decode's
# high-water in onnxruntime-web's heap is then 69.2 MiB instead of 99.7 (docs/benchmarks.md, exporter version 9).
UPSCALE_ROW_BLOCKS = 4


def per_image_inputs(outputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The "cached_<name>" feeds of an exported lowres graph: `outputs` (a previous run's on this image, without a
    mask input, by output name) or, without them, empty tensors that make the graph compute them."""
    empty = np.zeros((0, 0, 0, 0), np.float32)
    return {CACHED_PREFIX + name: empty if outputs is None else outputs[name] for name in PER_IMAGE_OUTPUTS}


class SamLowResOnnxModel(nn.Module):
    """
    Prompt encoder + mask decoder for B prompts on one image, returning every candidate's low-resolution
    logits; the client upsamples.

    Inputs: image_embeddings [1, 256, 64, 64], point_coords [B, N, 2], point_labels [B, N],
    mask_input [M, 1, 256, 256], has_mask_input [M], where M is 1 (no prompt has a mask: zeros and 0) or B
    (each prompt's own mask and flag), valid_tokens [2] int64: the rows and columns (r, c) of the 64 x 64 image
    tokens whose logits are wanted (64, 64: all; the client asks for those under the image, see
    web/js/mask-math.js tokenExtent).
    Outputs: iou_predictions [B, 4], low_res_masks [B, 4, 4r, 4c] (index 0 the single-mask token): the top-left
    4r x 4c corner of the 256 x 256 logits, equal to that corner of a run with all tokens; and PER_IMAGE_OUTPUTS,
    the first block's projections of the image rows ([M, 8, 16, 4096] keys, [M, 8, 4096, 16] values,
    [M, 8, 16, 4096] queries). The exported file takes these back as inputs "cached_<name>" on the next runs on
    the same image (empty tensors, e.g. [0, 0, 0, 0], on the first: per_image_inputs): see per_image_outputs.py.
    Prompts of one run have the same number of points N (a padding point is a token, and changes the masks);
    each prompt's outputs are those of its own run with B = 1.
    """

    def __init__(self, model: SamDecoderParts) -> None:
        super().__init__()
        self.decoder = FoldedMaskDecoder(model.mask_decoder)
        self.prompts = PromptEmbedder(model.prompt_encoder, model.image_size)

    @torch.no_grad()
    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        valid_tokens: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        sparse_embedding = self.prompts.embed_points(point_coords, point_labels)
        dense_embedding = self.prompts.embed_masks_per_prompt(mask_input, has_mask_input)
        _, _, height, width = image_embeddings.shape
        # Computed in the graph from the prompt encoder's 2 x 128 frequencies rather than stored as a 4 MB
        # constant: onnxruntime folds it once when the session is created (the file shrinks by 4 MB), in the
        # layout it is read in (no transposed copies held while folding).
        image_pe = self.prompts.prompt_encoder.get_dense_pe_rows()
        # [M, h * w, C]: one set of image rows shared by every prompt unless mask prompts make them differ.
        image = (image_embeddings + dense_embedding).flatten(2).transpose(1, 2)
        first_block = self.decoder.first_block_products(image, image_pe)
        tokens, image_tokens = self.decoder.forward_batch(image, image_pe, sparse_embedding, first_block)
        iou_predictions = self.decoder.predict_iou(tokens, ALL_MASKS)
        hyper_in = self.decoder.hypernetworks(tokens, ALL_MASKS)
        low_res_masks = self.decoder.upscale_batch(
            image_tokens, hyper_in, height, width, valid_tokens, row_blocks=UPSCALE_ROW_BLOCKS
        )
        return iou_predictions, low_res_masks, *first_block
