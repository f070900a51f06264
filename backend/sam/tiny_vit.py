"""TinyViT image encoder of MobileSAM (``vit_t``).

Parameter and buffer names follow MobileSAM's ``tiny_vit_sam.py`` so that ``mobile_sam.pt`` loads with
``strict=True``. The encoder maps a normalised, padded batch [B, 3, 1024, 1024] to the SAM image embedding
[B, 256, 64, 64]. The classification head (``norm_head``, ``head``) is kept only so checkpoints load; SAM
never calls it.
"""

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .common import LayerNorm2d

# MobileSAM keeps full resolution in the last merges (dims 320, 448 and 576 are the last stages of its
# TinyViT variants), so the encoder's output stride is 16 rather than TinyViT's 32.
_STRIDE_ONE_MERGE_DIMS = (320, 448, 576)
# "sdpa": this module's fast formulation (default). "math": MobileSAM's own, the plain baseline of the benchmark.
ATTENTION_IMPLS = ("math", "sdpa")


class Conv2d_BN(nn.Sequential):
    """Bias-free convolution followed by BatchNorm: [B, in_chans, H, W] -> [B, out_chans, H', W']."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False))
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.constant_(bn.bias, 0.0)
        self.add_module("bn", bn)

    fold_bn = True  # False: BatchNorm after the convolution, as MobileSAM computes it (TinyViT.attn_impl "math")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.fold_bn:
            return self.bn(self.c(x))
        # In eval mode BatchNorm is an affine map per channel, so it folds into the convolution: one pass
        # over the (large, early-stage) activations instead of two.
        conv, bn = self.c, self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale[:, None, None, None]
        bias = bn.bias - bn.running_mean * scale
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class DropPath(nn.Module):
    """Stochastic depth: drops whole residual branches per sample while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(mask_shape).bernoulli_(keep_prob)
        return x * mask / keep_prob


def _drop_path_or_identity(drop_prob: float) -> nn.Module:
    return DropPath(drop_prob) if drop_prob > 0.0 else nn.Identity()


class PatchEmbed(nn.Module):
    """Two stride-2 convolutions: [B, in_chans, H, W] -> [B, embed_dim, H/4, W/4]."""

    def __init__(self, in_chans: int, embed_dim: int, resolution: int, activation: type[nn.Module]) -> None:
        super().__init__()
        self.patches_resolution = (resolution // 4, resolution // 4)
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, embed_dim // 2, 3, 2, 1),
            activation(),
            Conv2d_BN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (1x1 expand, 3x3 depthwise, 1x1 project): [B, C, H, W] -> [B, C, H, W]."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        expand_ratio: float,
        activation: type[nn.Module],
        drop_path: float,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.hidden_chans = int(in_chans * expand_ratio)
        self.out_chans = out_chans

        self.conv1 = Conv2d_BN(in_chans, self.hidden_chans, kernel_size=1)
        self.act1 = activation()
        self.conv2 = Conv2d_BN(
            self.hidden_chans, self.hidden_chans, kernel_size=3, stride=1, padding=1, groups=self.hidden_chans
        )
        self.act2 = activation()
        self.conv3 = Conv2d_BN(self.hidden_chans, out_chans, kernel_size=1, bn_weight_init=0.0)
        self.act3 = activation()
        self.drop_path = _drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = _activate(self.act1, self.conv1(x))
        x = _activate(self.act2, self.conv2(x))
        x = self.drop_path(self.conv3(x))
        return _activate(self.act3, _add(x, shortcut))


class PatchMerging(nn.Module):
    """Downsampling between stages: [B, dim, H, W] or [B, H*W, dim] -> [B, H'*W', out_dim]."""

    def __init__(
        self,
        input_resolution: tuple[int, int],
        dim: int,
        out_dim: int,
        activation: type[nn.Module],
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.dim = dim
        self.out_dim = out_dim
        self.stride = 1 if out_dim in _STRIDE_ONE_MERGE_DIMS else 2
        self.act = activation()
        self.conv1 = Conv2d_BN(dim, out_dim, 1, 1, 0)
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, self.stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1, 1, 0)

    @property
    def output_resolution(self) -> tuple[int, int]:
        height, width = self.input_resolution
        # Output size of a 3x3 convolution with padding 1.
        return (height - 1) // self.stride + 1, (width - 1) // self.stride + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            height, width = self.input_resolution
            x = x.reshape(x.shape[0], height, width, -1).permute(0, 3, 1, 2)
        x = _activate(self.act, self.conv1(x))
        x = _activate(self.act, self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class _Stage(nn.Module):
    """Blocks at one resolution, then an optional PatchMerging; subclasses build both."""

    blocks: nn.ModuleList
    downsample: PatchMerging | None

    def __init__(self, dim: int, input_resolution: tuple[int, int], depth: int, use_checkpoint: bool) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.depth = depth
        self.use_checkpoint = use_checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = _run_block(block, x, self.use_checkpoint)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


def _merging(
    downsample: type[PatchMerging] | None,
    input_resolution: tuple[int, int],
    dim: int,
    out_dim: int | None,
    activation: type[nn.Module],
) -> PatchMerging | None:
    if downsample is None:
        return None
    return downsample(input_resolution, dim=dim, out_dim=out_dim, activation=activation)


class ConvLayer(_Stage):
    """First stage: MBConv blocks on [B, dim, H, W], then an optional PatchMerging to tokens."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        activation: type[nn.Module],
        drop_path: Sequence[float] = (),
        downsample: type[PatchMerging] | None = None,
        use_checkpoint: bool = False,
        out_dim: int | None = None,
        conv_expand_ratio: float = 4.0,
    ) -> None:
        super().__init__(dim, input_resolution, depth, use_checkpoint)
        drop_paths = _per_block(drop_path, depth)
        self.blocks = nn.ModuleList(
            [MBConv(dim, dim, conv_expand_ratio, activation, drop_paths[i]) for i in range(depth)]
        )
        self.downsample = _merging(downsample, input_resolution, dim, out_dim, activation)


class Mlp(nn.Module):
    """Pre-norm MLP on tokens: [B, N, in_features] -> [B, N, out_features]."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.norm = nn.LayerNorm(in_features)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.act = act_layer()
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(self.norm(x))))
        return self.drop(self.fc2(x))


class Attention(nn.Module):
    """Pre-norm multi-head attention over one window with a learned bias per (|dy|, |dx|) offset.

    [B*windows, N, dim] -> [B*windows, N, dim], N = resolution[0] * resolution[1].
    """

    # The bias [1, heads, N, N] gathered once from the table, for inference in float32 (the fused path sets
    # it); None, or under autograd: gathered at every call.
    fixed_bias: torch.Tensor | None = None

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int = 8,
        attn_ratio: float = 4.0,
        resolution: tuple[int, int] = (14, 14),
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.nh_kd = key_dim * num_heads
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.attn_ratio = attn_ratio

        self.attn_impl = "sdpa"
        self.norm = nn.LayerNorm(dim)
        # Per head, the projection holds [q | k | v] side by side (not all q's, then all k's, ...).
        self.qkv = nn.Linear(dim, self.dh + 2 * self.nh_kd)
        self.proj = nn.Linear(self.dh, dim)

        rows, cols = resolution
        # Offsets are symmetric (absolute values), so an offset (dy, dx) first appears at point pair
        # ((0, 0), (dy, dx)) and its table entry is dy * cols + dx.
        ys = torch.arange(rows).repeat_interleave(cols)
        xs = torch.arange(cols).repeat(rows)
        bias_idxs = (ys[:, None] - ys[None, :]).abs() * cols + (xs[:, None] - xs[None, :]).abs()
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, rows * cols))
        # Derived from the window shape, so not part of the checkpoint.
        self.register_buffer("attention_bias_idxs", bias_idxs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, num_tokens, _ = x.shape
        x = self.norm(x)
        qkv = self.qkv(x).view(batch, num_tokens, self.num_heads, -1)
        q, k, v = qkv.permute(0, 2, 1, 3).split([self.key_dim, self.key_dim, self.d], dim=3)
        if self.attn_impl == "math":
            # MobileSAM's formulation: the scores, bias and softmax as separate [B*windows, heads, N, N] tensors.
            attn = (q @ k.transpose(-2, -1)) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
            x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, num_tokens, self.dh)
            return self.proj(x)
        # A 4-D mask [1, heads, N, N] lets PyTorch pick its fused (flash) CPU kernel; a 3-D one falls back
        # to the unfused path, which is ~4x slower here. Under autocast the mask must match q's dtype.
        bias = self.fixed_bias
        if bias is None or bias.dtype != q.dtype or torch.is_grad_enabled():
            bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)[None]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        x = x.transpose(1, 2).reshape(batch, num_tokens, self.dh)
        return self.proj(x)


class TinyViTBlock(nn.Module):
    """Windowed attention, a depthwise local convolution, then an MLP: [B, H*W, dim] -> [B, H*W, dim]."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        local_conv_size: int = 3,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        if window_size <= 0:
            raise ValueError(f"window_size must be positive, got {window_size}")
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.input_resolution = input_resolution
        self.num_heads = num_heads
        self.window_size = window_size
        self.mlp_ratio = mlp_ratio

        self.drop_path = _drop_path_or_identity(drop_path)
        self.attn = Attention(dim, dim // num_heads, num_heads, attn_ratio=1, resolution=(window_size, window_size))
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=activation, drop=drop)
        self.local_conv = Conv2d_BN(
            dim, dim, kernel_size=local_conv_size, stride=1, padding=local_conv_size // 2, groups=dim
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.input_resolution
        batch, num_tokens, channels = x.shape
        if num_tokens != height * width:
            raise ValueError(f"expected {height}x{width}={height * width} tokens, got {num_tokens}")
        shortcut = x
        window = self.window_size

        if height == window and width == window:
            x = self.attn(x)
        else:
            x = x.reshape(batch, height, width, channels)
            pad_bottom = (window - height % window) % window
            pad_right = (window - width % window) % window
            # Zero tokens are padded before the attention's LayerNorm and are not masked out: this is
            # what MobileSAM computes, and its weights were trained with it.
            if pad_bottom > 0 or pad_right > 0:
                x = F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
            padded_h, padded_w = height + pad_bottom, width + pad_right
            rows, cols = padded_h // window, padded_w // window
            x = (
                x.view(batch, rows, window, cols, window, channels)
                .transpose(2, 3)
                .reshape(batch * rows * cols, window * window, channels)
            )
            x = self.attn(x)
            x = (
                x.view(batch, rows, cols, window, window, channels)
                .transpose(2, 3)
                .reshape(batch, padded_h, padded_w, channels)
            )
            x = x[:, :height, :width].reshape(batch, num_tokens, channels)

        x = shortcut + self.drop_path(x)
        # Tokens [B, H*W, C] are already an NHWC image: view them as channels-last NCHW, no copy.
        x = x.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        x = self.local_conv(x)
        x = x.flatten(2).transpose(1, 2)
        return x + self.drop_path(self.mlp(x))


class BasicLayer(_Stage):
    """One attention stage: TinyViT blocks on [B, H*W, dim], then an optional PatchMerging."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: Sequence[float] = (),
        downsample: type[PatchMerging] | None = None,
        use_checkpoint: bool = False,
        local_conv_size: int = 3,
        activation: type[nn.Module] = nn.GELU,
        out_dim: int | None = None,
    ) -> None:
        super().__init__(dim, input_resolution, depth, use_checkpoint)
        drop_paths = _per_block(drop_path, depth)
        self.blocks = nn.ModuleList(
            [
                TinyViTBlock(
                    dim=dim,
                    input_resolution=input_resolution,
                    num_heads=num_heads,
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    drop=drop,
                    drop_path=drop_paths[i],
                    local_conv_size=local_conv_size,
                    activation=activation,
                )
                for i in range(depth)
            ]
        )
        self.downsample = _merging(downsample, input_resolution, dim, out_dim, activation)


class TinyViT(nn.Module):
    """MobileSAM's image encoder: [B, in_chans, img_size, img_size] -> [B, 256, img_size/16, img_size/16].

    Arguments keep MobileSAM's names, including the training-only ones (``drop_rate``, ``drop_path_rate``,
    ``use_checkpoint``) and the unused classification head (``num_classes``); MobileSAM's per-layer
    learning-rate tags (``layer_lr_decay``) are left to training code.
    """

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (96, 192, 384, 768),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        use_checkpoint: bool = False,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
    ) -> None:
        super().__init__()
        if not (len(embed_dims) == len(depths) == len(num_heads) == len(window_sizes)):
            raise ValueError("embed_dims, depths, num_heads and window_sizes must have the same length")
        self.img_size = img_size
        self.num_classes = num_classes
        self.depths = depths
        self.num_layers = len(depths)
        self.mlp_ratio = mlp_ratio

        activation = nn.GELU
        self.patch_embed = PatchEmbed(
            in_chans=in_chans, embed_dim=embed_dims[0], resolution=img_size, activation=activation
        )
        self.patches_resolution = self.patch_embed.patches_resolution

        drop_path_rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        resolution = self.patches_resolution
        for i_layer in range(self.num_layers):
            is_last = i_layer == self.num_layers - 1
            common = dict(
                dim=embed_dims[i_layer],
                input_resolution=resolution,
                depth=depths[i_layer],
                drop_path=drop_path_rates[sum(depths[:i_layer]) : sum(depths[: i_layer + 1])],
                downsample=None if is_last else PatchMerging,
                use_checkpoint=use_checkpoint,
                out_dim=embed_dims[min(i_layer + 1, self.num_layers - 1)],
                activation=activation,
            )
            if i_layer == 0:
                layer: nn.Module = ConvLayer(conv_expand_ratio=mbconv_expand_ratio, **common)
            else:
                layer = BasicLayer(
                    num_heads=num_heads[i_layer],
                    window_size=window_sizes[i_layer],
                    mlp_ratio=mlp_ratio,
                    drop=drop_rate,
                    local_conv_size=local_conv_size,
                    **common,
                )
            self.layers.append(layer)
            if layer.downsample is not None:
                resolution = layer.downsample.output_resolution
        self.output_resolution = resolution

        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], 256, kernel_size=1, bias=False),
            LayerNorm2d(256),
            nn.Conv2d(256, 256, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(256),
        )

    @property
    def attn_impl(self) -> str:
        """ "sdpa" (default): fused attention, BatchNorm folded into its convolution, channels-last activations.
        "math": MobileSAM's formulation (explicit softmax(q k^T * scale + bias) v, each BatchNorm applied after
        its convolution, NCHW input), the plain baseline the benchmark measures speed-ups against."""
        return next((m.attn_impl for m in self.modules() if isinstance(m, Attention)), "sdpa")

    @attn_impl.setter
    def attn_impl(self, impl: str) -> None:
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        for module in self.modules():
            if isinstance(module, Attention):
                module.attn_impl = impl
            elif isinstance(module, Conv2d_BN):
                module.fold_bn = impl == "sdpa"
                # A fused path's module keeps the one it replaced (unregistered): that one follows too.
                source = module.__dict__.get("source")
                if source is not None:
                    source.fold_bn = module.fold_bn

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.constant_(module.bias, 0.0)
        elif isinstance(module, nn.LayerNorm):
            nn.init.constant_(module.weight, 1.0)
            nn.init.constant_(module.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.patch_embed.in_chans:
            raise ValueError(
                f"expected an image batch [B, {self.patch_embed.in_chans}, {self.img_size}, {self.img_size}],"
                f" got shape {list(x.shape)}"
            )
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"expected images padded to {self.img_size}x{self.img_size}, got {x.shape[-2]}x{x.shape[-1]}"
            )
        # Channels-last convolutions are faster on CPU (oneDNN) and match the token layout [B, H*W, C], so
        # the switches between convolutions and attention are views rather than copies.
        if self.attn_impl == "sdpa":
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        height, width = self.output_resolution
        x = x.reshape(x.shape[0], height, width, -1).permute(0, 3, 1, 2)
        return self.neck(x).contiguous()


def _activate(activation: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``activation(x)``, overwriting x when autograd does not need it.

    The first stage's activations are 64 MiB each (float32, 1024x1024 input). Each fresh buffer that
    large is new memory from the OS, and its page faults cost about as much as the GELU itself: working in
    place made the whole encoder ~9% faster (CPU time, fp32 and bf16).
    """
    if isinstance(activation, nn.GELU) and not (torch.is_grad_enabled() and x.requires_grad):
        return torch.ops.aten.gelu_(x, approximate=activation.approximate)
    return activation(x)


def _add(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``x + other``, in place into x when autograd does not need it and nothing is lost to dtype rounding."""
    if x.dtype == other.dtype and x.shape == other.shape and not (torch.is_grad_enabled() and x.requires_grad):
        return x.add_(other)
    return x + other


def _per_block(drop_path: "float | Sequence[float]", depth: int) -> list[float]:
    if isinstance(drop_path, (int, float)):
        return [float(drop_path)] * depth
    drop_paths = list(drop_path)
    return drop_paths if drop_paths else [0.0] * depth


def _run_block(block: nn.Module, x: torch.Tensor, use_checkpoint: bool) -> torch.Tensor:
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)
