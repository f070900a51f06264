"""Small building blocks shared by the encoder, prompt encoder and mask decoder."""

import torch
import torch.nn as nn


class MLPBlock(nn.Module):
    """Two linear layers with an activation between them: [..., dim] -> [..., dim]."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a [B, C, H, W] tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:
            # No casts: this layer is in the exported ONNX decoders, where each one would be a graph node.
            return _normalize_channels(x, self.weight, self.bias, self.eps)
        # Reduced precision is computed in float32, since an encoder's embedding is this layer's output; the
        # result has the parameters' dtype (float32 under bf16 autocast, bf16 for a model cast to bf16).
        out_dtype = torch.promote_types(x.dtype, self.weight.dtype)
        return _normalize_channels(x.float(), self.weight.float(), self.bias.float(), self.eps).to(out_dtype)


def _normalize_channels(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + eps)
    return weight[:, None, None] * x + bias[:, None, None]
