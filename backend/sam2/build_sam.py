"""Builders for SAM 2 / SAM 2.1 image models: `build_sam2(config, checkpoint=None)`.

`config` is a model type (MODEL_TYPES) or a dict like the reference data's `config`: {"base": model type,
"trunk": {Hiera kwargs}, "neck": {FpnNeck kwargs}, ...} whose entries override the base's (Meta's Hydra keys).
"""

import copy
import os
from collections.abc import Mapping
from typing import Any

import torch

from ..sam.build import UnknownModelTypeError
from ..sam.checkpoint import CheckpointError, PathLike, load_state_dict_file, mismatch_message
from .hieradet import Hiera
from .image_encoder import FpnNeck, ImageEncoder
from .position_encoding import PositionEmbeddingSine
from .sam2_base import SAM2Base, is_video_only_key

# Trunk and neck of each official config (Meta's configs/sam2 and configs/sam2.1: the image side is the same).
_HIERA: dict[str, dict[str, Any]] = {
    "hiera_t": {
        "trunk": dict(embed_dim=96, num_heads=1, stages=[1, 2, 7, 2], global_att_blocks=[5, 7, 9],
                      window_pos_embed_bkg_spatial_size=[7, 7]),
        "neck": dict(backbone_channel_list=[768, 384, 192, 96]),
    },
    "hiera_s": {
        "trunk": dict(embed_dim=96, num_heads=1, stages=[1, 2, 11, 2], global_att_blocks=[7, 10, 13],
                      window_pos_embed_bkg_spatial_size=[7, 7]),
        "neck": dict(backbone_channel_list=[768, 384, 192, 96]),
    },
    "hiera_b+": {
        "trunk": dict(embed_dim=112, num_heads=2),
        "neck": dict(backbone_channel_list=[896, 448, 224, 112]),
    },
    "hiera_l": {
        "trunk": dict(embed_dim=144, num_heads=2, stages=[2, 6, 36, 4], global_att_blocks=[23, 33, 43],
                      window_pos_embed_bkg_spatial_size=[7, 7], window_spec=[8, 4, 16, 8]),
        "neck": dict(backbone_channel_list=[1152, 576, 288, 144]),
    },
}  # fmt: skip

_NECK_DEFAULTS: dict[str, Any] = dict(d_model=256, fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")

# The dynamic multimask settings Meta's build_sam2 applies to every model.
_DECODER_EXTRA_ARGS: dict[str, Any] = dict(
    dynamic_multimask_via_stability=True,
    dynamic_multimask_stability_delta=0.05,
    dynamic_multimask_stability_thresh=0.98,
)

# model type -> (Meta's checkpoint file name, trunk).
MODEL_FILES: dict[str, tuple[str, str]] = {
    "sam2.1_hiera_t": ("sam2.1_hiera_tiny.pt", "hiera_t"),
    "sam2.1_hiera_s": ("sam2.1_hiera_small.pt", "hiera_s"),
    "sam2.1_hiera_b+": ("sam2.1_hiera_base_plus.pt", "hiera_b+"),
    "sam2.1_hiera_l": ("sam2.1_hiera_large.pt", "hiera_l"),
    "sam2_hiera_t": ("sam2_hiera_tiny.pt", "hiera_t"),
    "sam2_hiera_s": ("sam2_hiera_small.pt", "hiera_s"),
    "sam2_hiera_b+": ("sam2_hiera_base_plus.pt", "hiera_b+"),
    "sam2_hiera_l": ("sam2_hiera_large.pt", "hiera_l"),
}
MODEL_TYPES: tuple[str, ...] = tuple(MODEL_FILES)


def model_config(config: str | Mapping[str, Any]) -> dict[str, Any]:
    """The full {"base", "trunk", "neck"} config of a model type or a reference-style config dict."""
    if isinstance(config, str):
        config = {"base": config}
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a SAM 2 model type or a dict, got {type(config).__name__}")
    base = config.get("base", "sam2.1_hiera_t")
    if base not in MODEL_FILES:
        raise UnknownModelTypeError(f"unknown SAM 2 model type {base!r}: expected one of {', '.join(MODEL_TYPES)}")
    resolved = copy.deepcopy(_HIERA[MODEL_FILES[base][1]])
    resolved["neck"] = {**_NECK_DEFAULTS, **resolved["neck"]}
    for part in ("trunk", "neck"):
        resolved[part].update(copy.deepcopy(dict(config.get(part, {}))))
    resolved["base"] = base
    return resolved


def build_sam2(config: str | Mapping[str, Any] = "sam2.1_hiera_t", checkpoint: PathLike | None = None) -> SAM2Base:
    """A SAM 2 image model in eval mode; loads `checkpoint` (Meta's {"model": state_dict}) when given.

    Every checkpoint key must match the model in name and shape, except the video-only keys
    (sam2_base.VIDEO_ONLY_PREFIXES), which are skipped.
    """
    resolved = model_config(config)
    trunk = Hiera(**resolved["trunk"])
    neck = FpnNeck(
        position_encoding=PositionEmbeddingSine(num_pos_feats=resolved["neck"]["d_model"]),
        **resolved["neck"],
    )
    model = SAM2Base(
        image_encoder=ImageEncoder(trunk=trunk, neck=neck, scalp=1),
        image_size=1024,
        sam_mask_decoder_extra_args=_DECODER_EXTRA_ARGS,
    )
    model.eval()
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def load_checkpoint(model: SAM2Base, checkpoint: PathLike) -> None:
    """Loads an official-format checkpoint strictly, less its video-only keys; CheckpointError if it does not fit."""
    state_dict = load_state_dict_file(checkpoint)
    image_state = {k: v for k, v in state_dict.items() if not is_video_only_key(k)}
    try:
        model.load_state_dict(image_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(mismatch_message(model, image_state, os.fspath(checkpoint))) from exc


def video_only_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of a checkpoint that loading skips."""
    return [k for k in state_dict if is_video_only_key(k)]
