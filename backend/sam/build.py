"""Model builders and the registry: `sam_model_registry[model_type](checkpoint=None)`."""

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, PathLike, load_state_dict_file, mismatch_message
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer


class UnknownModelTypeError(CheckpointError, KeyError):
    """A model type that the registry does not know (also a KeyError, as a dict lookup would raise)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


VIT_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_h": dict(
        encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16, encoder_global_attn_indexes=[7, 15, 23, 31]
    ),
    "vit_l": dict(
        encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=[5, 11, 17, 23]
    ),
    "vit_b": dict(
        encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=[2, 5, 8, 11]
    ),
}


def build_sam(
    checkpoint: PathLike | None = None,
    *,
    encoder_embed_dim: int = 1280,
    encoder_depth: int = 32,
    encoder_num_heads: int = 16,
    encoder_global_attn_indexes: Sequence[int] = (7, 15, 23, 31),
    prompt_embed_dim: int = 256,
    image_size: int = 1024,
    patch_size: int = 16,
    window_size: int = 14,
    use_rel_pos: bool = True,
    mlp_ratio: float = 4.0,
) -> Sam:
    """A SAM with a ViT image encoder; the defaults are ViT-H. Loads `checkpoint` (strict) when given."""
    state_dict = _load_checked(checkpoint, _describe_vit(encoder_embed_dim, encoder_depth))

    image_embedding_size = image_size // patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=encoder_depth,
            embed_dim=encoder_embed_dim,
            img_size=image_size,
            mlp_ratio=mlp_ratio,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=encoder_num_heads,
            patch_size=patch_size,
            qkv_bias=True,
            use_rel_pos=use_rel_pos,
            global_attn_indexes=tuple(encoder_global_attn_indexes),
            window_size=window_size,
            out_chans=prompt_embed_dim,
        ),
        prompt_encoder=_prompt_encoder(prompt_embed_dim, image_size, image_embedding_size),
        mask_decoder=_mask_decoder(prompt_embed_dim),
    )
    return _finish(sam, state_dict, checkpoint)


def build_sam_vit_h(checkpoint: PathLike | None = None) -> Sam:
    return build_sam(checkpoint, **VIT_CONFIGS["vit_h"])


def build_sam_vit_l(checkpoint: PathLike | None = None) -> Sam:
    return build_sam(checkpoint, **VIT_CONFIGS["vit_l"])


def build_sam_vit_b(checkpoint: PathLike | None = None) -> Sam:
    return build_sam(checkpoint, **VIT_CONFIGS["vit_b"])


def build_sam_vit_t(checkpoint: PathLike | None = None) -> Sam:
    """MobileSAM: the TinyViT image encoder with SAM's prompt encoder and mask decoder."""
    state_dict = _load_checked(checkpoint, VIT_T_DESCRIPTION)

    prompt_embed_dim, image_size = 256, 1024
    sam = Sam(
        image_encoder=build_mobile_sam_encoder(image_size),
        prompt_encoder=_prompt_encoder(prompt_embed_dim, image_size, image_size // 16),
        mask_decoder=_mask_decoder(prompt_embed_dim),
    )
    return _finish(sam, state_dict, checkpoint)


class _Registry(dict):
    def __missing__(self, model_type: Any) -> Callable[..., Sam]:
        raise UnknownModelTypeError(f"unknown SAM model type {model_type!r}: expected one of {', '.join(sorted(self))}")


sam_model_registry: dict[str, Callable[..., Sam]] = _Registry(
    default=build_sam_vit_h,
    vit_h=build_sam_vit_h,
    vit_l=build_sam_vit_l,
    vit_b=build_sam_vit_b,
    vit_t=build_sam_vit_t,
)

# The model types the registry builds, for CLI choices and config checks.
MODEL_TYPES: tuple[str, ...] = tuple(sam_model_registry)


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _prompt_encoder(prompt_embed_dim: int, image_size: int, image_embedding_size: int) -> PromptEncoder:
    return PromptEncoder(
        embed_dim=prompt_embed_dim,
        image_embedding_size=(image_embedding_size, image_embedding_size),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )


def _mask_decoder(prompt_embed_dim: int) -> MaskDecoder:
    return MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_embed_dim, mlp_dim=2048, num_heads=8),
        transformer_dim=prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )


class MobileSamImageEncoder(TinyViT):
    """TinyViT honouring the same `autocast_dtype` knob as ImageEncoderViT (state_dict keys unchanged)."""

    autocast_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return super().forward(x)
        with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
            return super().forward(x).float()


def build_mobile_sam_encoder(image_size: int = 1024) -> MobileSamImageEncoder:
    """MobileSAM's TinyViT-5M image encoder with randomly initialised weights."""
    return MobileSamImageEncoder(
        img_size=image_size,
        in_chans=3,
        num_classes=1000,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
    )


def _finish(sam: Sam, state_dict: Mapping[str, torch.Tensor] | None, checkpoint: PathLike | None) -> Sam:
    sam.eval()
    if state_dict is not None:
        try:
            sam.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(mismatch_message(sam, state_dict, os.fspath(checkpoint))) from exc
    return sam


VIT_T_DESCRIPTION = "vit_t (MobileSAM, TinyViT encoder)"


def _describe_vit(embed_dim: int, depth: int) -> str:
    for model_type, config in VIT_CONFIGS.items():
        if config["encoder_embed_dim"] == embed_dim and config["encoder_depth"] == depth:
            return f"{model_type} (ViT encoder, embed dim {embed_dim}, {depth} blocks)"
    return f"a custom ViT SAM (embed dim {embed_dim}, {depth} blocks)"


def describe_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which SAM a state_dict belongs to, in words (e.g. "vit_l (ViT encoder, embed dim 1024, 24 blocks)")."""
    keys = list(state_dict)
    if any(k.startswith("image_encoder.layers.") for k in keys):
        return VIT_T_DESCRIPTION
    pos_embed = state_dict.get("image_encoder.pos_embed")
    if pos_embed is not None and any(k.startswith("mask_decoder.") for k in keys):
        blocks = {k.split(".")[2] for k in keys if k.startswith("image_encoder.blocks.")}
        return _describe_vit(int(pos_embed.shape[-1]), len(blocks))
    return f"a state_dict that is not a SAM model ({len(keys)} tensors, e.g. {', '.join(keys[:3])})"


def _load_checked(checkpoint: PathLike | None, expected: str) -> dict[str, torch.Tensor] | None:
    """The state_dict at checkpoint (None without one), after checking it is the model to build."""
    if checkpoint is None:
        return None
    state_dict = load_state_dict_file(checkpoint)
    found = describe_state_dict(state_dict)
    if found != expected:
        raise CheckpointError(f"checkpoint {os.fspath(checkpoint)} holds {found}, but the model to build is {expected}")
    return state_dict
