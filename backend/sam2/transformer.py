"""SAM 2's two-way transformer: SAM's, whose token MLPs are two-layer `MLP`s (keys mlp.layers.0/1)."""

import torch.nn as nn

from ..sam.mask_decoder import MLP
from ..sam.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer

__all__ = ["Attention", "TwoWayAttentionBlock", "TwoWayTransformer", "build_two_way_transformer", "token_mlp"]


def token_mlp(embedding_dim: int, mlp_dim: int, activation: type[nn.Module]) -> MLP:
    """The MLP of a SAM 2 two-way block: [..., embedding_dim] -> [..., embedding_dim]."""
    return MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation=activation)


def build_two_way_transformer(embedding_dim: int = 256) -> TwoWayTransformer:
    """The transformer of SAM 2's mask decoder: depth 2, 8 heads, MLP width 2048."""
    return TwoWayTransformer(depth=2, embedding_dim=embedding_dim, mlp_dim=2048, num_heads=8, mlp_block=token_mlp)
