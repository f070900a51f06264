"""SAM2Base for images: the image encoder, SAM's prompt encoder and SAM 2's mask decoder, and the one piece of
the video model's state that images use (`no_mem_embed`, added to the image embedding of a first frame).

The video-only modules (memory attention, memory encoder, object pointers, temporal encodings) are left out;
`VIDEO_ONLY_PREFIXES` lists the checkpoint keys they own, which loading skips.
"""

import contextlib
import logging
import os

import torch
import torch.nn as nn

from ..runtime import encoder_paths
from .image_encoder import ImageEncoder
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import build_two_way_transformer

# Keys of an official checkpoint that belong to video tracking only (a key matches a prefix exactly or continues
# it with a dot).
VIDEO_ONLY_PREFIXES: tuple[str, ...] = (
    "memory_attention",
    "memory_encoder",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
    "obj_ptr_proj",
    "obj_ptr_tpos_proj",
    "mask_downsample",
)


logger = logging.getLogger(__name__)

# The encoder paths of SAM 2's Hiera (SAM_PRECISION): exact fp32, or bf16 autocast. SAM 1's fused / int8 kernels
# are written for its ViT and TinyViT blocks.
SAM2_PRECISIONS = ("fp32", "bf16")


def is_video_only_key(key: str) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in VIDEO_ONLY_PREFIXES)


class SAM2Base(nn.Module):
    """SAM 2 for single images (Meta's SAM2Base less its video modules; same names and state_dict keys)."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: ImageEncoder,
        image_size: int = 1024,
        backbone_stride: int = 16,
        hidden_dim: int = 256,
        directly_add_no_mem_embed: bool = True,
        use_high_res_features_in_sam: bool = True,
        iou_prediction_use_sigmoid: bool = True,
        pred_obj_scores: bool = True,
        pred_obj_scores_mlp: bool = True,
        use_multimask_token_for_obj_ptr: bool = True,
        sam_mask_decoder_extra_args: dict | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.use_high_res_features_in_sam = use_high_res_features_in_sam
        self.num_feature_levels = 3 if use_high_res_features_in_sam else 1
        self.hidden_dim = hidden_dim
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        nn.init.trunc_normal_(self.no_mem_embed, std=0.02)
        self.directly_add_no_mem_embed = directly_add_no_mem_embed
        self.iou_prediction_use_sigmoid = iou_prediction_use_sigmoid
        self.image_size = image_size
        self.backbone_stride = backbone_stride
        self.pred_obj_scores = pred_obj_scores

        self.sam_prompt_embed_dim = hidden_dim
        self.sam_image_embedding_size = image_size // backbone_stride
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=hidden_dim,
            image_embedding_size=(self.sam_image_embedding_size, self.sam_image_embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        )
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=build_two_way_transformer(hidden_dim),
            transformer_dim=hidden_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            use_high_res_features=use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=iou_prediction_use_sigmoid,
            pred_obj_scores=pred_obj_scores,
            pred_obj_scores_mlp=pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=use_multimask_token_for_obj_ptr,
            **(sam_mask_decoder_extra_args or {}),
        )

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    def forward_image(self, img_batch: torch.Tensor) -> dict:
        """The image encoder's output for a normalised [B, 3, 1024, 1024] batch, with the two highest-resolution
        maps already projected by the decoder's conv_s0 / conv_s1 (done once per image, not per prompt)."""
        backbone_out = self.image_encoder(img_batch)
        if self.use_high_res_features_in_sam:
            backbone_out["backbone_fpn"][0] = self.sam_mask_decoder.conv_s0(backbone_out["backbone_fpn"][0])
            backbone_out["backbone_fpn"][1] = self.sam_mask_decoder.conv_s1(backbone_out["backbone_fpn"][1])
        return backbone_out

    @property
    def precision(self) -> str:
        """ "fp32" or "bf16": how the image encoder computes (``set_precision``)."""
        return getattr(self, "_precision", "fp32")

    @property
    def encoder_path(self) -> str:
        """The path in use in words, e.g. "bf16 + fused attention" (Hiera's attention is always fused SDPA)."""
        return encoder_paths.LABELS[self.precision]

    def set_precision(self, precision: str = "auto", cache_dir: str | os.PathLike | None = None) -> str:
        """Choose how the image encoder computes; returns "fp32" or "bf16".

        "fp32" is Meta's formulation. "bf16": the encoder (trunk, neck, high-res projections) under bf16
        autocast; its outputs are float32 again. "auto": bf16 where the device computes bf16 natively (CUDA with
        bf16, CPUs with AVX512-BF16 or AMX), else fp32. ``cache_dir`` is unused (no measurement is needed).
        Prompt encoder and decoder stay fp32.
        """
        if precision == "auto":
            device_type = self.device.type
            caps = encoder_paths.detect(device_type)
            native = caps.cuda_bf16 if device_type == "cuda" else caps.native_bf16
            precision = "bf16" if native else "fp32"
            logger.info("encoder path auto -> %s on %s", precision, caps.describe())
        if precision not in SAM2_PRECISIONS:
            raise ValueError(f"SAM 2's encoder runs {' or '.join(SAM2_PRECISIONS)} (or auto), not {precision!r}")
        self._precision = precision
        return precision

    def image_features(self, img_batch: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """What the decoder needs of a normalised batch [B, 3, 1024, 1024]: {"image_embed": [B, 256, 64, 64]
        (no_mem_embed added), "high_res_feats": [feat_s0 [B, 32, 256, 256], feat_s1 [B, 64, 128, 128]]}, float32
        on every encoder path."""
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            backbone_out = self.forward_image(img_batch)
        backbone_out["backbone_fpn"] = [f.float() for f in backbone_out["backbone_fpn"]]
        feature_maps = backbone_out["backbone_fpn"][-self.num_feature_levels :]
        image_embed = feature_maps[-1]
        if self.directly_add_no_mem_embed:
            # no_mem_embed [1, 1, C] is added per channel (Meta adds it to the flattened [HW, B, C] map).
            image_embed = image_embed + self.no_mem_embed.reshape(1, -1, 1, 1)
        return {"image_embed": image_embed, "high_res_feats": list(feature_maps[:-1])}

    def forward(self, *args, **kwargs):
        raise NotImplementedError("use SAM2ImagePredictor or SAM2AutomaticMaskGenerator")
