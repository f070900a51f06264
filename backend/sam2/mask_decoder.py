"""SAM 2's mask decoder: SAM's, plus high-resolution features in the upscaling, an object-score head and a
single-mask answer that falls back to the most stable multimask candidate."""

import torch
import torch.nn as nn

from ..sam.folded_decoder import folded_two_way_transformer
from ..sam.mask_decoder import MLP
from ..sam.mask_decoder import MaskDecoder as SamMaskDecoder


class MaskDecoder(SamMaskDecoder):
    """Predicts masks [B, K, 256, 256], IoU scores [B, K], SAM output tokens and object-score logits [B, 1].

    Token order into the transformer: object-score token (with pred_obj_scores), IoU token, mask tokens, prompts.
    With use_high_res_features, feat_s1 [B, C/4, 128, 128] is added after the first transposed convolution
    and feat_s0 [B, C/8, 256, 256] after the second (both already projected by conv_s1 / conv_s0).
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = False,
        iou_prediction_use_sigmoid: bool = False,
        dynamic_multimask_via_stability: bool = False,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        use_multimask_token_for_obj_ptr: bool = False,
    ) -> None:
        super().__init__(
            transformer_dim=transformer_dim,
            transformer=transformer,
            num_multimask_outputs=num_multimask_outputs,
            activation=activation,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        )
        self.iou_prediction_head.sigmoid_output = iou_prediction_use_sigmoid
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)
            self.pred_obj_score_head = (
                MLP(transformer_dim, transformer_dim, 1, 3) if pred_obj_scores_mlp else nn.Linear(transformer_dim, 1)
            )
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1, stride=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1, stride=1)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        repeat_image: bool = False,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """image_embeddings [1 or B, C, 64, 64] (repeat_image: one image for B prompts), image_pe [1, C, 64, 64],
        sparse [B, N, C], dense [B, C, 64, 64], high_res_features [feat_s0, feat_s1].

        Returns masks [B, K, 256, 256], iou_pred [B, K] (K = 3 with multimask_output, else 1), SAM output tokens
        [B, K', C] and object-score logits [B, 1].
        """
        masks, iou_pred, mask_tokens_out, object_score_logits = self.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            repeat_image=repeat_image,
            high_res_features=high_res_features,
        )
        masks, iou_pred = self.select_masks(masks, iou_pred, multimask_output)
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            # The video model tracks with the single-mask token, whatever was asked for.
            sam_tokens_out = mask_tokens_out[:, 0:1]
        return masks, iou_pred, sam_tokens_out, object_score_logits

    def select_masks(
        self, masks: torch.Tensor, iou_pred: torch.Tensor, multimask_output: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All four tokens' masks [B, 4, H, W] and IoUs [B, 4] -> the three candidates, or the single-mask answer."""
        if multimask_output:
            return masks[:, 1:, :, :], iou_pred[:, 1:]
        if self.dynamic_multimask_via_stability and not self.training:
            return self._dynamic_multimask_via_stability(masks, iou_pred)
        return masks[:, 0:1, :, :], iou_pred[:, 0:1]

    def output_tokens(self, sparse_prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """[object-score token,] IoU token, mask tokens, then the prompts: sparse [B, N, C] -> [B, s + 1 + K + N, C]."""
        tokens = super().output_tokens(sparse_prompt_embeddings)
        if not self.pred_obj_scores:
            return tokens
        obj_token = self.obj_score_token.weight.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return torch.cat((obj_token, tokens), dim=1)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        repeat_image: bool = False,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All mask tokens: masks [B, 4, 256, 256], iou_pred [B, 4], mask tokens [B, 4, C], object scores [B, 1]."""
        tokens = self.output_tokens(sparse_prompt_embeddings)
        if repeat_image:
            src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0)
        else:
            if image_embeddings.shape[0] != tokens.shape[0]:
                raise ValueError(
                    f"{image_embeddings.shape[0]} image embeddings for {tokens.shape[0]} prompts: pass repeat_image"
                )
            src = image_embeddings
        src = src + dense_prompt_embeddings
        pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        batch, channels, height, width = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        src = src.transpose(1, 2).reshape(batch, channels, height, width)
        return self._heads(hs, src, high_res_features)

    def predict_masks_shared_image(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """predict_masks for B prompts [B, N, C] on one image [1, C, h, w] with one dense embedding [1, C, h, w]
        (no mask inputs), equal up to float rounding: the two-way transformer runs folded (SAM's
        folded_decoder), projecting on the token side instead of once per prompt over every image token."""
        tokens = self.output_tokens(sparse_prompt_embeddings)
        batch = tokens.shape[0]
        _, channels, height, width = image_embeddings.shape
        image = (image_embeddings + dense_prompt_embeddings)[0].flatten(1).t()
        pe = image_pe[0].flatten(1).t()
        hs, keys = folded_two_way_transformer(self.transformer, image, pe, tokens)
        if keys.dim() == 2:  # the same image tokens for every prompt
            keys = keys.unsqueeze(0).expand(batch, -1, -1)
        src = keys.transpose(1, 2).reshape(batch, channels, height, width)
        return self._heads(hs, src, high_res_features)

    def _heads(
        self, hs: torch.Tensor, src: torch.Tensor, high_res_features: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The transformer's tokens [B, T, C] and image [B, C, h, w] -> masks, IoUs, mask tokens, object scores."""
        first = 1 if self.pred_obj_scores else 0
        iou_token_out = hs[:, first, :]
        mask_tokens_out = hs[:, first + 1 : first + 1 + self.num_mask_tokens, :]
        upscaled = self.upscale(src, high_res_features)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        batch, channels, height, width = upscaled.shape
        masks = (hyper_in @ upscaled.view(batch, channels, height * width)).view(batch, -1, height, width)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0, :])
        else:
            # "Object present" (sigmoid(10) ~ 1) when the model has no object-score head.
            object_score_logits = 10.0 * iou_pred.new_ones(iou_pred.shape[0], 1)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def upscale(self, src: torch.Tensor, high_res_features: list[torch.Tensor] | None) -> torch.Tensor:
        """The transformer's image [B, C, 64, 64] -> per-pixel mask features [B, C/8, 256, 256]."""
        if not self.use_high_res_features:
            return self.output_upscaling(src)
        if high_res_features is None:
            raise ValueError("this decoder needs the image's high-resolution features [feat_s0, feat_s1]")
        deconv1, norm1, act1, deconv2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res_features
        upscaled = act1(norm1(deconv1(src) + feat_s1))
        return act2(deconv2(upscaled) + feat_s0)

    def _get_stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """IoU of a mask thresholded at +delta and at -delta: [B, K, H, W] -> [B, K] (1 for an empty mask)."""
        mask_logits = mask_logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        area_i = torch.sum(mask_logits > delta, dim=-1).float()
        area_u = torch.sum(mask_logits > -delta, dim=-1).float()
        return torch.where(area_u > 0, area_i / area_u, 1.0)

    def _dynamic_multimask_via_stability(
        self, all_mask_logits: torch.Tensor, all_iou_scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The single-mask answer [B, 1, H, W], [B, 1]: token 0 when its mask is stable, else the multimask
        candidate with the highest predicted IoU."""
        multimask_logits = all_mask_logits[:, 1:, :, :]
        multimask_iou_scores = all_iou_scores[:, 1:]
        best = torch.argmax(multimask_iou_scores, dim=-1)
        rows = torch.arange(multimask_iou_scores.size(0), device=all_iou_scores.device)
        best_multimask_logits = multimask_logits[rows, best].unsqueeze(1)
        best_multimask_iou_scores = multimask_iou_scores[rows, best].unsqueeze(1)

        singlemask_logits = all_mask_logits[:, 0:1, :, :]
        singlemask_iou_scores = all_iou_scores[:, 0:1]
        is_stable = self._get_stability_scores(singlemask_logits) >= self.dynamic_multimask_stability_thresh
        mask_logits_out = torch.where(
            is_stable[..., None, None].expand_as(singlemask_logits), singlemask_logits, best_multimask_logits
        )
        iou_scores_out = torch.where(
            is_stable.expand_as(singlemask_iou_scores), singlemask_iou_scores, best_multimask_iou_scores
        )
        return mask_logits_out, iou_scores_out
