"""int8 Linear layers for the image encoder on CPU: int8 weights per output channel, activations quantized per call.

The matrix products run in torch's quantized engine, oneDNN where torch has it (u8 x s8 -> s32 with the
dequantization fused: `brg_matmul:avx512_core_vnni` on AVX512-VNNI CPUs, see ONEDNN_VERBOSE=1; 1.4x less CPU
time than FBGEMM's kernels for a vit_b MLP layer), else FBGEMM. The rest of the encoder stays float32.
Swapping keeps the parameters (same ``weight`` / ``bias`` objects, same state_dict), so ``restore_linears``
gives back the exact float32 model.
"""

import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tiny_vit import TinyViT

ENGINES = ("onednn", "x86", "fbgemm")  # preferred first


def int8_engine() -> str | None:
    """The quantized engine the int8 Linear layers use in this torch build, or None when it has none."""
    return next((e for e in ENGINES if e in torch.backends.quantized.supported_engines), None)


def int8_supported() -> bool:
    """True when this torch build has a CPU engine for dynamically quantized Linear layers."""
    return int8_engine() is not None


class Int8Linear(nn.Linear):
    """``nn.Linear`` computing ``x @ W^T + b`` with W as int8 (one scale per output row) and x quantized to
    uint8 per call (one scale and zero point per tensor, from its min/max).

    ``full_range``: use all 8 bits of the activations. Without VNNI, the AVX2 kernels add pairs of u8 x s8
    products in int16, which can saturate at full range; there 7 bits (``full_range=False``) are safe.
    """

    def __init__(self, linear: nn.Linear, full_range: bool = True) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # shared, not copied: the state_dict is unchanged
        self.full_range = full_range
        self.repack()

    def repack(self) -> None:
        """Quantizes the current float weights (call again after loading new ones)."""
        weight = self.weight.detach().float().cpu()
        scales = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
        with warnings.catch_warnings():
            # torch marks its quantized tensor types as deprecated (to move to torchao); FBGEMM's dynamic Linear
            # kernels still take their weights in this form, and nothing else in torch offers them.
            warnings.simplefilter("ignore", UserWarning)
            qweight = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
        bias = None if self.bias is None else self.bias.detach().float().cpu()
        # The packed weights carry their engine (the call dispatches on them), so the process-wide engine
        # setting is only borrowed for packing.
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = int8_engine()
        try:
            self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        finally:
            torch.backends.quantized.engine = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in_features] float32 -> [..., out_features] float32."""
        if x.dtype != torch.float32 or x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return F.linear(x, self.weight, self.bias)  # the quantized kernels are CPU, float32, inference only
        return torch.ops.quantized.linear_dynamic(x, self._packed, not self.full_range)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, int8, full_range={self.full_range}"


def attention_output(name: str) -> bool:
    """The attention blocks' output projections (``...attn.proj``): their input, softmax-weighted averages of
    values, loses too much to 8 bits. On vit_b (seeded weights, dog.jpg) keeping them float32 raised the mean
    mask IoU from 0.9895 to 0.9921 (embedding cosine 0.99977 -> 0.99984) for 1/12 of the Linear work."""
    return name.endswith("attn.proj")


def tiny_vit_float(name: str) -> bool:
    """The Linear layers of MobileSAM's TinyViT that stay float32 in its int8 path: all but the MLP output layers
    of the first attention stage (``layers.1``: [16384, 512] -> [16384, 128], a tenth of the encoder's time).

    TinyViT's masks are far more sensitive to int8 than vit_b's (seeded weights, dog.jpg, mean mask IoU over
    the reference prompts): int8 everywhere but ``attn.proj`` gives embedding cosine 0.99908 and IoU 0.977;
    all MLP output layers 0.99969 / 0.987; these two alone 0.99994 / 0.9945. The later stages' layers are
    small enough that quantizing their activations costs about what the int8 product saves."""
    return not (name.startswith("layers.1.") and name.endswith("mlp.fc2"))


def keep_float_for(encoder: nn.Module) -> Callable[[str], bool]:
    """Which Linear layers of ``encoder`` its int8 path keeps float32 (by qualified name)."""
    return tiny_vit_float if isinstance(encoder, TinyViT) else attention_output


def quantize_linears(
    module: nn.Module, full_range: bool = True, keep_float: Callable[[str], bool] = attention_output, prefix: str = ""
) -> int:
    """Replaces the ``nn.Linear`` layers inside ``module`` (except where ``keep_float(qualified name)``) by
    ``Int8Linear`` layers sharing their parameters; returns how many are int8."""
    count = 0
    for name, child in module.named_children():
        qualified = f"{prefix}{name}"
        if isinstance(child, Int8Linear):
            child.full_range = full_range
            child.repack()
            count += 1
        elif isinstance(child, nn.Linear):
            if not keep_float(qualified):
                setattr(module, name, Int8Linear(child, full_range))
                count += 1
        else:
            count += quantize_linears(child, full_range, keep_float, f"{qualified}.")
    return count


def restore_linears(module: nn.Module) -> int:
    """Undoes ``quantize_linears``: plain ``nn.Linear`` layers holding the same parameters; returns how many."""
    count = 0
    for name, child in module.named_children():
        if isinstance(child, Int8Linear):
            linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
            linear.weight, linear.bias = child.weight, child.bias
            setattr(module, name, linear)
            count += 1
        else:
            count += restore_linears(child)
    return count
