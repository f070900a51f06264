"""Positional encodings of SAM 2: the sine encoding of the FPN neck's maps, and SAM's random Fourier features."""

import math

import torch
import torch.nn as nn

from ..sam.prompt_encoder import PositionEmbeddingRandom

__all__ = ["PositionEmbeddingRandom", "PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """The "Attention is all you need" sine encoding in 2-D: a map [B, C, H, W] -> its encoding [B, num_pos_feats, H, W].

    The first half of the channels encodes y, the second x; positions are normalised to (0, scale] when
    normalize is set.
    """

    def __init__(
        self,
        num_pos_feats: int,
        temperature: int = 10000,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("normalize must be True if scale is passed")
        self.num_pos_feats = num_pos_feats // 2
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        # The encoding depends only on (H, W): computed once per size.
        self.cache: dict[tuple[int, int], torch.Tensor] = {}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        key = (height, width)
        cached = self.cache.get(key)
        if cached is None or cached.device != x.device:
            cached = self._encode(height, width, x.device)
            self.cache[key] = cached
        return cached[None].repeat(x.shape[0], 1, 1, 1)

    def _encode(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        y_embed = torch.arange(1, height + 1, dtype=torch.float32, device=device).view(-1, 1).expand(height, width)
        x_embed = torch.arange(1, width + 1, dtype=torch.float32, device=device).view(1, -1).expand(height, width)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (height + eps) * self.scale
            x_embed = x_embed / (width + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, None] / dim_t
        pos_y = y_embed[:, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
        pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
        return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)
