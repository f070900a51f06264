"""The `lowres` decoder's two-way transformer: backend.sam.folded_decoder for a single prompt (batch 1)."""

import torch
import torch.nn as nn

from backend.sam.folded_decoder import folded_two_way_transformer


class FoldedTwoWayTransformer(nn.Module):
    """
    TwoWayTransformer.forward with folded cross-attentions, for a single prompt (batch 1).

    Inputs: image_tokens [HW, C] (row-major pixels), image_pe [HW, C], point_embedding [1, T, C].
    Outputs: tokens [1, T, C], image tokens [HW, C].
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self, image_tokens: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        queries, keys = folded_two_way_transformer(self.transformer, image_tokens, image_pe, point_embedding)
        return queries, keys[0]
