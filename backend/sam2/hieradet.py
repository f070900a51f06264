"""Hiera trunk of SAM 2's image encoder (hierarchical windowed ViT with query pooling between stages)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..sam.image_encoder import PatchEmbed, window_partition, window_unpartition
from ..sam.mask_decoder import MLP


def do_pool(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """Pools a [B, H, W, C] map spatially (channels last in and out); identity without a pool."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Attention over a [B, H, W, dim] map whose queries may be pooled (stage changes): -> [B, H', W', dim_out]."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1)
        q, k, v = torch.unbind(qkv, 2)  # each [B, H * W, heads, head_dim]

        if self.q_pool is not None:
            q = do_pool(q.reshape(batch, height, width, -1), self.q_pool)
            height, width = q.shape[1:3]
            q = q.reshape(batch, height * width, self.num_heads, -1)

        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x.transpose(1, 2).reshape(batch, height, width, -1)
        return self.proj(x)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block on [B, H, W, dim]; at a stage change it widens to dim_out and halves H and W."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        q_stride: tuple[int, int] | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.window_size = window_size
        self.q_stride = q_stride
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride, ceil_mode=False) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=act_layer)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            # The residual of a stage change is the projected, pooled normalised input.
            shortcut = do_pool(self.proj(x), self.pool)

        window_size = self.window_size
        if window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x, padded_hw = window_partition(x, window_size)

        x = self.attn(x)
        if self.q_stride:
            # Query pooling shrank every window: unpartition at the pooled size.
            window_size = self.window_size // self.q_stride[0]
            height, width = shortcut.shape[1:3]
            pad_h = (window_size - height % window_size) % window_size
            pad_w = (window_size - width % window_size) % window_size
            padded_hw = (height + pad_h, width + pad_w)

        if self.window_size > 0:
            x = window_unpartition(x, window_size, padded_hw, (height, width))

        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """Hiera (https://arxiv.org/abs/2306.00989): [B, 3, H, W] -> one [B, C_i, H / s_i, W / s_i] map per stage.

    Stage i has `stages[i]` blocks; each new stage doubles the width (dim_mul) and heads (head_mul) and pools the
    queries by q_stride. Blocks in global_att_blocks attend globally, the others within window_spec[stage]
    windows. Outputs are ordered from the highest resolution (stride 4) to the lowest (stride 32).
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: tuple[int, ...] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        window_spec: tuple[int, ...] = (8, 4, 14, 7),
        global_att_blocks: tuple[int, ...] = (12, 16, 20),
        return_interm_layers: bool = True,
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(f"stages {list(stages)} and window_spec {list(window_spec)} differ in length")
        self.window_spec = tuple(window_spec)
        depth = sum(stages)
        self.q_stride = tuple(q_stride)
        self.stage_ends = [sum(stages[:i]) - 1 for i in range(1, len(stages) + 1)]
        if not 0 <= q_pool <= len(self.stage_ends) - 1:
            raise ValueError(f"q_pool must be between 0 and {len(self.stage_ends) - 1}, got {q_pool}")
        self.q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.return_interm_layers = return_interm_layers

        self.patch_embed = PatchEmbed(kernel_size=(7, 7), stride=(4, 4), padding=(3, 3), embed_dim=embed_dim)
        self.global_att_blocks = tuple(global_att_blocks)

        # Windowed positional embedding (https://arxiv.org/abs/2311.05613): a background embedding resized to
        # the map, plus one window's embedding tiled over it.
        self.window_pos_embed_bkg_spatial_size = tuple(window_pos_embed_bkg_spatial_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *self.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, self.window_spec[0], self.window_spec[0]))

        cur_stage = 1
        self.blocks = nn.ModuleList()
        for i in range(depth):
            dim_out = embed_dim
            # The window size lags by a block: a stage's first block still uses the previous stage's window.
            window_size = self.window_spec[cur_stage - 1]
            if i in self.global_att_blocks:
                window_size = 0
            if i - 1 in self.stage_ends:
                dim_out = int(embed_dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                cur_stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim=embed_dim,
                    dim_out=dim_out,
                    num_heads=num_heads,
                    q_stride=self.q_stride if i in self.q_pool_blocks else None,
                    window_size=window_size,
                )
            )
            embed_dim = dim_out

        self.channel_list = (
            [self.blocks[i].dim_out for i in self.stage_ends[::-1]]
            if return_interm_layers
            else [self.blocks[-1].dim_out]
        )

    def _get_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """The positional embedding of an H x W map: [1, H, W, C]."""
        pos_embed = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        window_embed = self.pos_embed_window
        pos_embed = pos_embed + window_embed.tile(
            [p // w for p, w in zip(pos_embed.shape, window_embed.shape, strict=True)]
        )
        return pos_embed.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        x = x + self._get_pos_embed(x.shape[1:3])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.stage_ends[-1] or (i in self.stage_ends and self.return_interm_layers):
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
