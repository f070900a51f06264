"""The ViT image encoder of SAM (ViT-B/L/H): [B, 3, 1024, 1024] -> [B, 256, 64, 64]."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import LayerNorm2d, MLPBlock

ATTENTION_IMPLS = ("math", "sdpa")


class ImageEncoderViT(nn.Module):
    """Plain ViT backbone with windowed and global attention blocks and a neck to `out_chans` channels.

    Two inference knobs that do not change the weights:
    - `attn_impl`: "sdpa" (torch scaled_dot_product_attention with the relative-position bias as an additive
      mask) or "math" (explicit softmax(q k^T) v, the reference formulation).
    - `autocast_dtype`: None (exact float32) or torch.bfloat16 / torch.float16 to run the forward pass under
      torch.autocast; the output is always returned as float32.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        global_attn_indexes: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.autocast_dtype: torch.dtype | None = None

        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        grid = img_size // patch_size

        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))

        self.blocks = nn.ModuleList()
        for i in range(depth):
            is_global = i in global_attn_indexes
            self.blocks.append(
                Block(
                    dim=embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    norm_layer=norm_layer,
                    act_layer=act_layer,
                    use_rel_pos=use_rel_pos,
                    window_size=0 if is_global else window_size,
                    input_size=(grid, grid) if is_global else (window_size, window_size),
                )
            )

        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @property
    def attn_impl(self) -> str:
        return self.blocks[0].attn.attn_impl if len(self.blocks) else "sdpa"

    @attn_impl.setter
    def attn_impl(self, impl: str) -> None:
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        for blk in self.blocks:
            blk.attn.attn_impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, img_size, img_size] normalised and padded -> [B, out_chans, img_size/16, img_size/16]."""
        if self.autocast_dtype is None:
            return self._forward(x)
        with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
            return self._forward(x).float()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))


class Block(nn.Module):
    """Transformer block on a [B, H, W, C] grid, attending inside windows or over the whole grid."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size,
        )
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=act_layer)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x, padded_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, padded_hw, (height, width))
        # Under autocast the branches come out in bf16/fp16: the residual stream stays float32 (accuracy), the
        # branch is cast first (PyTorch's mixed-dtype add is slow), and added in place into that fresh tensor.
        x = _fresh(x, shortcut.dtype).add_(shortcut)
        return _fresh(self.mlp(self.norm2(x)), x.dtype).add_(x)


class Attention(nn.Module):
    """Multi-head self-attention on a [B, H, W, C] grid with optional decomposed relative positions."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.attn_impl = "sdpa"

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

        self.use_rel_pos = use_rel_pos
        if self.use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos is True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        tokens = height * width
        # [3, B, heads, H * W, head_dim]
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if self.attn_impl == "sdpa":
            out = self._sdpa(*qkv.unbind(0), (height, width))
        else:
            out = self._math(*qkv.reshape(3, batch * self.num_heads, tokens, -1).unbind(0), (height, width))
        out = (
            out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
        )
        return self.proj(out)

    def _math(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The reference formulation; q, k, v: [B * heads, H * W, head_dim]."""
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            attn = attn + decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, hw, hw)
        return attn.softmax(dim=-1) @ v

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Fused attention; q, k, v: [B, heads, H * W, head_dim] -> [B, heads, H * W, head_dim]."""
        if not self.use_rel_pos:
            return F.scaled_dot_product_attention(q, k, v)
        if q.dtype == torch.float32:
            return self._sdpa_bias(q, k, v, hw)
        return self._sdpa_codes(q, k, v, hw)

    def _sdpa_bias(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The relative-position bias as an additive mask, built for a band of queries at a time.

        In float32 the fused kernel is bound by its softmax, so the widened products of ``_sdpa_codes`` cost
        more than writing the bias: 5% less CPU time on a 64x64 global block, 13% on 14x14 windows.
        Bands keep the mask within ``_MASK_BYTES`` (a whole 64x64 bias is 805 MB for 12 heads).
        """
        batch, heads, tokens, head_dim = q.shape
        height, width = hw
        rel_h, rel_w = decomposed_rel_pos_terms(
            q.reshape(batch * heads, tokens, head_dim), self.rel_pos_h, self.rel_pos_w, hw, hw
        )
        rel_h = rel_h.reshape(batch, heads, tokens, height, 1)
        rel_w = rel_w.reshape(batch, heads, tokens, 1, width)
        band = max(1, _MASK_BYTES // (batch * heads * tokens * q.element_size()))
        if band >= tokens:
            bias = (rel_h + rel_w).view(batch, heads, tokens, tokens)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = torch.empty_like(q)
        for start in range(0, tokens, band):
            stop = min(tokens, start + band)
            bias = (rel_h[:, :, start:stop] + rel_w[:, :, start:stop]).view(batch, heads, stop - start, tokens)
            out[:, :, start:stop] = F.scaled_dot_product_attention(
                q[:, :, start:stop], k, v, attn_mask=bias, scale=self.scale
            )
        return out

    def _sdpa_codes(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The relative-position bias folded into q and k, for bf16 / fp16 (where it is faster than a mask).

        The bias is rel_h[i, row(j)] + rel_w[i, col(j)], i.e. a dot product of [rel_h[i], rel_w[i]] with
        one-hot row/column codes of key j. Appending those to q and k gives the biased logits without
        materialising a [tokens, tokens] bias, so the fused kernel (which needs q, k and v of one width) can
        run: v is zero-padded to that width and the padding dropped afterwards. With bf16 products (AMX) the
        wider products are nearly free, and the mask's memory traffic is not (32% more CPU time on a 64x64
        global block).
        """
        batch, heads, tokens, head_dim = q.shape
        height, width = hw
        rel_h, rel_w = decomposed_rel_pos_terms(
            q.reshape(batch * heads, tokens, head_dim), self.rel_pos_h, self.rel_pos_w, hw, hw
        )
        rows = torch.eye(height, dtype=k.dtype, device=k.device)[:, None, :].expand(height, width, height)
        cols = torch.eye(width, dtype=k.dtype, device=k.device)[None, :, :].expand(height, width, width)
        codes = torch.cat([rows, cols], dim=-1).reshape(1, 1, tokens, height + width).expand(batch, heads, -1, -1)
        q = torch.cat(
            [q * self.scale, rel_h.reshape(batch, heads, tokens, height), rel_w.reshape(batch, heads, tokens, width)],
            dim=-1,
        )
        k = torch.cat([k, codes], dim=-1)
        v = F.pad(v, (0, height + width))
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :head_dim]


# Largest relative-position mask built at once by Attention._sdpa_bias.
_MASK_BYTES = 128 << 20


def _fresh(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x` as `dtype`; `x` is a block-internal intermediate, so adding into it in place is safe."""
    return x if x.dtype == dtype else x.to(dtype)


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, H, W, C] -> ([B * num_windows, window, window, C], padded (Hp, Wp)); pads bottom/right with zeros."""
    batch, height, width, channels = x.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w

    x = x.view(batch, padded_h // window_size, window_size, padded_w // window_size, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of window_partition: [B * num_windows, window, window, C] -> [B, H, W, C] with padding removed."""
    padded_h, padded_w = padded_hw
    height, width = hw
    batch = windows.shape[0] // (padded_h * padded_w // window_size // window_size)
    x = windows.view(batch, padded_h // window_size, padded_w // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(batch, padded_h, padded_w, -1)
    if padded_h > height or padded_w > width:
        x = x[:, :height, :width, :].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings for every (query, key) pair along one axis: [q_size, k_size, C].

    rel_pos: [L, C]; linearly resized to 2 * max(q_size, k_size) - 1 rows when L differs.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)

    # Scale coordinates so queries and keys of different lengths share one axis.
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def decomposed_rel_pos_terms(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query relative-position terms along each axis (MViTv2's decomposition).

    q: [B, q_h * q_w, C] unscaled queries -> rel_h [B, q_h, q_w, k_h], rel_w [B, q_h, q_w, k_w].
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    rel_h_table = get_rel_pos(q_h, k_h, rel_pos_h)
    rel_w_table = get_rel_pos(q_w, k_w, rel_pos_w)

    batch, _, dim = q.shape
    grid_q = q.reshape(batch, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid_q, rel_h_table.to(q.dtype))
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid_q, rel_w_table.to(q.dtype))
    return rel_h, rel_w


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """Additive attention bias of decomposed relative positions: q [B, q_h * q_w, C] -> [B, q_h * q_w, k_h * k_w]."""
    rel_h, rel_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, q_size, k_size)
    bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return bias.reshape(q.shape[0], q_size[0] * q_size[1], k_size[0] * k_size[1])


class PatchEmbed(nn.Module):
    """Patchify with a strided convolution: [B, C, H, W] -> [B, H / stride, W / stride, embed_dim]."""

    def __init__(
        self,
        kernel_size: tuple[int, int] = (16, 16),
        stride: tuple[int, int] = (16, 16),
        padding: tuple[int, int] = (0, 0),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)
