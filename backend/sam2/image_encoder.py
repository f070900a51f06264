"""SAM 2's image encoder: a trunk (Hiera) and an FPN neck that brings every level to d_model channels."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class ImageEncoder(nn.Module):
    """trunk + neck: [B, 3, 1024, 1024] -> {"vision_features", "vision_pos_enc", "backbone_fpn"}.

    backbone_fpn holds the neck's maps from the highest resolution to the lowest, less the `scalp` lowest
    ones; vision_features is the last of them ([B, 256, 64, 64] for SAM 2).
    """

    def __init__(self, trunk: nn.Module, neck: "FpnNeck", scalp: int = 0) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(
                f"trunk channels {list(trunk.channel_list)} do not match the neck's {list(neck.backbone_channel_list)}"
            )

    def forward(self, sample: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        features, pos = self.neck(self.trunk(sample))
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}


class FpnNeck(nn.Module):
    """A feature pyramid without output convolutions: 1x1 lateral convolutions to d_model channels, and
    top-down features (2x `fpn_interp_model` upsampling) added on `fpn_top_down_levels` only.

    Input: the trunk's maps from high to low resolution, with backbone_channel_list listing their channels from
    low to high resolution. Output: (maps, positional encodings), both from high to low resolution.
    """

    def __init__(
        self,
        position_encoding: nn.Module,
        d_model: int,
        backbone_channel_list: list[int],
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "bilinear",
        fuse_type: str = "sum",
        fpn_top_down_levels: list[int] | None = None,
    ) -> None:
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"fuse_type must be 'sum' or 'avg', got {fuse_type!r}")
        self.position_encoding = position_encoding
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList()
        for dim in self.backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=kernel_size, stride=stride, padding=padding))
            self.convs.append(lateral)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = list(levels)

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if len(xs) != len(self.convs):
            raise ValueError(f"the neck expects {len(self.convs)} maps, got {len(xs)}")
        out: list[torch.Tensor] = [None] * len(self.convs)  # type: ignore[list-item]
        pos: list[torch.Tensor] = [None] * len(self.convs)  # type: ignore[list-item]
        prev_features = None
        last = len(self.convs) - 1
        # Top-down: from the lowest resolution to the highest.
        for i in range(last, -1, -1):
            lateral_features = self.convs[last - i](xs[i])
            if i in self.fpn_top_down_levels and prev_features is not None:
                top_down_features = F.interpolate(
                    prev_features.to(dtype=torch.float32),
                    scale_factor=2.0,
                    mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                    antialias=False,
                )
                prev_features = lateral_features + top_down_features
                if self.fuse_type == "avg":
                    prev_features = prev_features / 2
            else:
                prev_features = lateral_features
            out[i] = prev_features
            pos[i] = self.position_encoding(prev_features).to(prev_features.dtype)
        return out, pos
