"""
SAM 2's mask decoder computed the fast way: backend.sam.folded_decoder's rearrangement plus SAM 2's additions.

The two-way transformer and the channels-last upscaling are SAM's (FoldedMaskDecoder's methods); SAM 2 differs
in three places this class covers: the object-score token comes first, so the IoU and mask tokens sit one
further on; the upscaling adds the projected high-resolution features (feat_s1 after the first transposed
convolution, feat_s0 after the second), which are brought into the upscaling's pixel-row order. The IoU head's
sigmoid (SAM 2.1) is inside iou_prediction_head, so predict_iou applies it as Meta does. The single-mask
stability fallback picks among finished masks and is left to the caller, as for the official graph.
"""

import torch

from ..sam.folded_decoder import MULTIMASK, FoldedMaskDecoder, _activation, _image_layer_norm
from .mask_decoder import MaskDecoder


class Sam2FoldedMaskDecoder(FoldedMaskDecoder):
    """FoldedMaskDecoder for SAM 2's MaskDecoder (image-side tensors are channels-last pixel rows [h * w, C])."""

    def __init__(self, mask_decoder: MaskDecoder) -> None:
        super().__init__(mask_decoder)
        # Index of the IoU token among the transformer's output tokens (the object-score token precedes it).
        self.first = 1 if getattr(mask_decoder, "pred_obj_scores", False) else 0

    def predict_iou(self, tokens: torch.Tensor, masks: slice = MULTIMASK) -> torch.Tensor:
        """Transformer tokens [B, T, C] -> predicted IoUs [B, k] of the selected mask tokens."""
        return super().predict_iou(tokens[:, self.first :], masks)

    def hypernetworks(self, tokens: torch.Tensor, masks: slice = MULTIMASK) -> torch.Tensor:
        """Transformer tokens [B, T, C] -> each selected mask token's pixel weights [B, k, C / 8]."""
        return super().hypernetworks(tokens[:, self.first :], masks)

    def upscale(
        self,
        image_tokens: torch.Tensor,
        hyper_in: torch.Tensor,
        height: int,
        width: int,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """output_upscaling with the high-res adds, then the hypernetwork product, for one prompt.

        image_tokens [h * w, C]; hyper_in [k, C / 8]; high_res_features [feat_s0 [1, C/8, 4h, 4w],
        feat_s1 [1, C/4, 2h, 2w]] (already projected by conv_s0 / conv_s1) -> low-res logits [k, 4h, 4w].
        """
        if not self.mask_decoder.use_high_res_features:
            return super().upscale(image_tokens, hyper_in, height, width)
        if high_res_features is None:
            raise ValueError("this decoder needs the image's high-resolution features [feat_s0, feat_s1]")
        feat_s0, feat_s1 = high_res_features
        conv1, norm, act1, conv2, act2 = self.mask_decoder.output_upscaling
        # rows (i, j, a, b): [h * w * 4, C / 4], pixel (2i + a, 2j + b) of feat_s1.
        x = torch.addmm(self.conv1_bias, image_tokens, self.conv1_weight).view(-1, conv1.out_channels)
        x = _activation(act1, _image_layer_norm(norm, x + upscaling_rows(feat_s1, height, width, 1)))
        # rows (i, j, a, b, c, d): [h * w * 16, C / 8], pixel (4i + 2a + c, 4j + 2b + d) of feat_s0.
        x = torch.addmm(self.conv2_bias, x, self.conv2_weight).view(-1, conv2.out_channels)
        x = _activation(act2, x + upscaling_rows(feat_s0, height, width, 2))
        logits = hyper_in @ x.t()  # [k, h * w * 16]
        logits = logits.view(-1, height, width, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
        return logits.reshape(-1, 4 * height, 4 * width)


def upscaling_rows(feature: torch.Tensor, height: int, width: int, levels: int) -> torch.Tensor:
    """[1, C', 2^levels h, 2^levels w] -> [h * w * 4^levels, C'] in the upscaling's row order.

    Level 1: rows (i, j, a, b) hold pixel (2i + a, 2j + b); level 2: rows (i, j, a, b, c, d) hold pixel
    (4i + 2a + c, 4j + 2b + d), the order of FoldedMaskDecoder.upscale's 2x2 children.
    """
    channels = feature.shape[1]
    if levels == 1:
        x = feature.reshape(channels, height, 2, width, 2)  # (ch, i, a, j, b)
        return x.permute(1, 3, 2, 4, 0).reshape(-1, channels)
    x = feature.reshape(channels, height, 2, 2, width, 2, 2)  # (ch, i, a, c, j, b, d)
    return x.permute(1, 4, 2, 5, 3, 6, 0).reshape(-1, channels)
