"""The encoder's "fused" CPU path: a convolution with its BatchNorm and GELU, or a Linear with its GELU, as one
oneDNN call with post-ops (the kernels torch.compile's CPU backend uses, called here without compiling).

Unfused, each GELU reads and writes a whole activation again, and ``F.linear`` first copies its bias into the
output; in MobileSAM's TinyViT these tensors are large (64 MiB for a 256x256x256 MBConv activation), so the
extra passes over memory cost as much as a good part of the arithmetic. Fused, oneDNN applies bias and GELU to
each block of the product while it is in cache. BatchNorm is folded into the convolution's weights once, when
the path is applied (``set_precision``), rather than at every call, and the first stage's MBConvs run in bands
of rows so that their intermediates stay in cache (``FusedMBConv``).

Swapping keeps the parameters (the state_dict is unchanged; folded weights are non-persistent buffers), and
``unfuse`` gives back the plain modules, hence the exact float32 path.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .int8_linear import Int8Linear
from .tiny_vit import Attention, Conv2d_BN, MBConv, PatchEmbed, PatchMerging

# (first linear, activation) attribute names of an MLP: TinyViT's Mlp, SAM's MLPBlock.
_MLP_LAYOUTS = (("fc1", "act"), ("lin1", "act"))


def fused_supported() -> bool:
    """True when this torch build has oneDNN's fused convolution / linear kernels with post-ops."""
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(ops, name) for name in ("_linear_pointwise", "_convolution_pointwise")
    )


def _fusable(x: torch.Tensor) -> bool:
    # The oneDNN kernels take CPU float32 and are inference only; elsewhere the modules compute unfused.
    return x.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_grad_enabled()


def _gelu_algorithm(gelu: nn.GELU | None) -> tuple[str, str]:
    if gelu is None:
        return "none", "none"
    return "gelu", "tanh" if gelu.approximate == "tanh" else "none"


class LinearGELU(nn.Linear):
    """``gelu(x @ W^T + b)`` in one oneDNN call: [..., in_features] -> [..., out_features]. Holds the GELU it
    replaces (``self.gelu``) to compute unfused where the kernel does not apply, and for ``unfuse``."""

    def __init__(self, linear: nn.Linear, gelu: nn.GELU) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # shared, not copied: the state_dict is unchanged
        self.gelu = gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fusable(x):
            return self.gelu(F.linear(x, self.weight, self.bias))
        attr, algorithm = _gelu_algorithm(self.gelu)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, attr, [], algorithm)


class InplaceGELU(nn.GELU):
    """GELU overwriting its input, after an int8 MLP layer (whose fresh output nothing else reads): no new
    activation buffer, whose page faults cost about as much as the GELU (vit_b int8: 3.6% less CPU time)."""

    def __init__(self, gelu: nn.GELU) -> None:
        super().__init__(gelu.approximate)
        self.__dict__["source"] = gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        return torch.ops.aten.gelu_(x, approximate=self.approximate)


class FusedConv2dBN(Conv2d_BN):
    """A ``Conv2d_BN`` (optionally with the GELU after it) as one oneDNN convolution with BatchNorm folded into
    its weights: [B, in, H, W] -> [B, out, H', W']. Shares the ``c`` and ``bn`` modules it replaces (same
    state_dict keys); ``source`` is the replaced module itself, for ``unfuse``."""

    def __init__(self, conv_bn: Conv2d_BN, gelu: nn.GELU | None = None) -> None:
        nn.Sequential.__init__(self)
        self.add_module("c", conv_bn.c)
        self.add_module("bn", conv_bn.bn)
        self.__dict__["source"] = conv_bn  # not a submodule: its parameters are already c's and bn's
        self.gelu = gelu  # parameter-free, so registering it adds nothing to the state_dict
        self.train(conv_bn.training)  # training: BatchNorm with batch statistics, unfused (Conv2d_BN's forward)
        conv, bn = conv_bn.c, conv_bn.bn
        with torch.no_grad():
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            weight = conv.weight * scale[:, None, None, None]
            if conv.groups == 1:  # oneDNN's layout for channels-last activations; depthwise weights stay as they are
                weight = weight.contiguous(memory_format=torch.channels_last)
            # Not persistent: derived from the (unchanged) parameters of ``source``.
            self.register_buffer("weight", weight, persistent=False)
            self.register_buffer("bias", bn.bias - bn.running_mean * scale, persistent=False)
        self.conv_args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not _fusable(x):
            out = self.source(x)
            return out if self.gelu is None else self.gelu(out)
        attr, algorithm = _gelu_algorithm(self.gelu)
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *self.conv_args, attr, [], algorithm)


# Intermediate activations of an MBConv band (rows x width x hidden channels, float32): about L2-sized bands
# measured 1.11-1.19x less CPU time for the whole encoder than whole-image MBConvs (32 rows of 256x256x256).
_BAND_BYTES = 8 << 20


class FusedMBConv(MBConv):
    """An MBConv (with fused convolutions) computed in bands of rows: [B, C, H, W] -> [B, C, H, W].

    Whole-image, each of its 256-channel intermediates at 256x256 is a 64 MiB tensor written and read back from
    memory; in bands of ``_BAND_BYTES`` they stay in cache. The 3x3 depthwise convolution needs one row above and
    below a band, so each band's expansion is computed on those halo rows too (a few percent more work) and the
    halo rows of the depthwise output are dropped. Every output value is computed from the same inputs by the
    same kernels as whole-image. Shares all modules with the MBConv it replaces (``source``, for ``unfuse``).
    """

    def __init__(self, mbconv: MBConv) -> None:
        nn.Module.__init__(self)
        self.in_chans, self.hidden_chans, self.out_chans = mbconv.in_chans, mbconv.hidden_chans, mbconv.out_chans
        for name, child in mbconv.named_children():
            self.add_module(name, child)
        self.__dict__["source"] = mbconv
        self.train(mbconv.training)

    def _bandable(self, x: torch.Tensor) -> bool:
        conv2 = self.conv2
        return (
            not self.training
            and _fusable(x)
            and isinstance(self.conv1, FusedConv2dBN)
            and isinstance(conv2, FusedConv2dBN)
            and isinstance(self.conv3, FusedConv2dBN)
            and conv2.conv_args[:2] == ([1, 1], [1, 1])  # 3x3, padding 1, stride 1: one halo row
            and isinstance(self.act3, nn.GELU)
            and isinstance(self.drop_path, nn.Identity)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._bandable(x):
            return super().forward(x)
        batch, _, height, width = x.shape
        rows = max(1, _BAND_BYTES // (batch * width * self.hidden_chans * x.element_size()))
        if rows >= height:
            return super().forward(x)
        out = torch.empty_like(x)
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            first, last = max(0, top - 1), min(height, bottom + 1)
            hidden = self.conv2(self.conv1(x[:, :, first:last]))  # zero padding is right only at image edges:
            hidden = hidden[:, :, top - first : top - first + bottom - top]  # drop the halo rows
            band = self.conv3(hidden).add_(x[:, :, top:bottom])
            out[:, :, top:bottom] = torch.ops.aten.gelu_(band, approximate=self.act3.approximate)
        return out


FUSED_MODULES = (LinearGELU, InplaceGELU, FusedConv2dBN, FusedMBConv)


def _fuse_conv(module: nn.Module, conv_name: str, act_name: str | None, gelu: nn.GELU | None = None) -> int:
    """``module.<conv_name>`` fused, with the GELU in ``module.<act_name>`` (then an Identity) or ``gelu``."""
    conv = getattr(module, conv_name)
    if not isinstance(conv, Conv2d_BN):
        return 0
    if act_name is not None and isinstance(getattr(module, act_name), nn.GELU):
        gelu = getattr(module, act_name)
        setattr(module, act_name, nn.Identity())
    setattr(module, conv_name, FusedConv2dBN(conv, gelu))
    return 1


def fuse(module: nn.Module) -> int:
    """Swaps in the fused modules throughout ``module``: each MLP's first Linear with its GELU (an in-place GELU
    after an int8 one), each TinyViT
    ``Conv2d_BN`` (with the GELU right after it where there is one); TinyViT's attention bias is gathered from
    its table once. Returns how many modules were fused."""
    count = 0
    for child in list(module.modules()):
        if isinstance(child, Attention):
            with torch.no_grad():
                child.fixed_bias = child.attention_biases[:, child.attention_bias_idxs][None].contiguous()
        for linear_name, act_name in _MLP_LAYOUTS:
            linear, act = getattr(child, linear_name, None), getattr(child, act_name, None)
            if type(linear) is nn.Linear and isinstance(act, nn.GELU):
                setattr(child, linear_name, LinearGELU(linear, act))
                setattr(child, act_name, nn.Identity())
                count += 1
            elif isinstance(linear, Int8Linear) and type(act) is nn.GELU:
                setattr(child, act_name, InplaceGELU(act))
                count += 1
        if isinstance(child, MBConv):
            count += _fuse_conv(child, "conv1", "act1") + _fuse_conv(child, "conv2", "act2")
        elif isinstance(child, PatchMerging):
            # One GELU module serves both conv1 and conv2; it moves into both fused convolutions.
            if isinstance(child.act, nn.GELU):
                gelu, child.act = child.act, nn.Identity()
                count += _fuse_conv(child, "conv1", None, gelu) + _fuse_conv(child, "conv2", None, gelu)
        elif isinstance(child, PatchEmbed) and isinstance(child.seq[1], nn.GELU):
            count += _fuse_conv(child.seq, "0", "1")
    for child in list(module.modules()):  # the remaining Conv2d_BN layers, no activation to fuse
        for name, grandchild in list(child.named_children()):
            if type(grandchild) is Conv2d_BN and not isinstance(child, FusedConv2dBN):
                setattr(child, name, FusedConv2dBN(grandchild))
                count += 1
    for child in list(module.modules()):  # last: the MBConvs, their convolutions fused by now
        for name, grandchild in list(child.named_children()):
            if type(grandchild) is MBConv:
                setattr(child, name, FusedMBConv(grandchild))
                count += 1
    return count


def unfuse(module: nn.Module) -> int:
    """Undoes ``fuse``: the plain modules back, same parameters; returns how many fused modules were undone."""
    count = 0
    for child in list(module.modules()):  # first: the MBConvs back, holding the fused modules to undo below
        for name, grandchild in list(child.named_children()):
            if isinstance(grandchild, FusedMBConv):
                source = grandchild.source
                for part, module_ in grandchild.named_children():
                    setattr(source, part, module_)
                setattr(child, name, source)
                count += 1
    for child in list(module.modules()):
        if isinstance(child, Attention):
            child.fixed_bias = None
        for linear_name, act_name in _MLP_LAYOUTS:
            fused = getattr(child, linear_name, None)
            if isinstance(fused, LinearGELU):
                linear = nn.Linear(fused.in_features, fused.out_features, bias=fused.bias is not None, device="meta")
                linear.weight, linear.bias = fused.weight, fused.bias
                setattr(child, linear_name, linear)
                setattr(child, act_name, fused.gelu)
                count += 1
            elif isinstance(getattr(child, act_name, None), InplaceGELU):
                setattr(child, act_name, getattr(child, act_name).source)
                count += 1
        if isinstance(child, PatchMerging) and isinstance(child.conv1, FusedConv2dBN) and child.conv1.gelu:
            child.act = child.conv1.gelu
        elif isinstance(child, MBConv):
            for conv_name, act_name in (("conv1", "act1"), ("conv2", "act2")):
                fused = getattr(child, conv_name)
                if isinstance(fused, FusedConv2dBN) and fused.gelu is not None:
                    setattr(child, act_name, fused.gelu)
        elif isinstance(child, PatchEmbed) and isinstance(child.seq[0], FusedConv2dBN) and child.seq[0].gelu:
            child.seq[1] = child.seq[0].gelu
        for name, grandchild in list(child.named_children()):
            if isinstance(grandchild, FusedConv2dBN):
                setattr(child, name, grandchild.source)
                count += 1
    return count
