"""The official ONNX decoder interface (interchangeable with Meta's exported decoder)."""

import copy

import torch
import torch.nn as nn
from torch.nn import functional as F

from backend.sam.amg import calculate_stability_score


class SamDecoderParts(nn.Module):
    """A float32 CPU copy of the prompt encoder and mask decoder of a Sam, the only parts the ONNX graphs use."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        # Copies, so a model on CUDA or in reduced precision is left as it is for its other users.
        self.prompt_encoder = copy.deepcopy(model.prompt_encoder).to(device="cpu", dtype=torch.float32).eval()
        self.mask_decoder = copy.deepcopy(model.mask_decoder).to(device="cpu", dtype=torch.float32).eval()
        self.mask_threshold = float(model.mask_threshold)
        self.image_size = int(self.prompt_encoder.input_image_size[0])


class PromptEmbedder(nn.Module):
    """Point and mask prompt embedding written with ONNX-friendly ops (no boolean indexing)."""

    def __init__(self, prompt_encoder: nn.Module, image_size: int) -> None:
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.image_size = image_size

    def embed_points(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        """point_coords [1, N, 2] in the 1024 frame, point_labels [1, N] -> sparse embeddings [1, N, C]."""
        # The +0.5 puts the point at its pixel centre, as PromptEncoder._embed_points does.
        normalized = (point_coords + 0.5) / self.image_size
        embedding = self.prompt_encoder.pe_layer._pe_encoding(normalized)
        labels = point_labels.unsqueeze(-1)
        is_padding = (labels == -1).to(embedding.dtype)
        embedding = embedding * (1 - is_padding) + self.prompt_encoder.not_a_point_embed.weight * is_padding
        for label, point_embedding in enumerate(self.prompt_encoder.point_embeddings):
            embedding = embedding + point_embedding.weight * (labels == label).to(embedding.dtype)
        return embedding

    def embed_masks(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """mask_input [1, 1, 256, 256], has_mask_input [1] -> dense embeddings [1, C, 64, 64]."""
        mask_embedding = has_mask_input * self.prompt_encoder.mask_downscaling(mask_input)
        no_mask_embedding = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return mask_embedding + (1 - has_mask_input) * no_mask_embedding

    def embed_masks_per_prompt(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """mask_input [M, 1, 256, 256], has_mask_input [M] (one flag per prompt, or M = 1 for all)
        -> dense embeddings [M, C, 64, 64]; a prompt flagged 0 gets exactly the no-mask embedding."""
        has_mask_input = has_mask_input.reshape(-1, 1, 1, 1)
        mask_embedding = has_mask_input * self.prompt_encoder.mask_downscaling(mask_input)
        no_mask_embedding = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return mask_embedding + (1 - has_mask_input) * no_mask_embedding


def resize_longest_image_size(input_image_size: torch.Tensor, longest_side: int) -> torch.Tensor:
    """(H, W) float tensor -> the (h, w) int64 size after resizing the longest side to longest_side."""
    scale = longest_side / torch.max(input_image_size)
    return torch.floor(scale * input_image_size + 0.5).to(torch.int64)


class SamOnnxModel(nn.Module):
    """
    Prompt encoder + mask decoder + mask postprocessing with Meta's ONNX interface.

    Inputs: image_embeddings [1, 256, 64, 64], point_coords [1, N, 2], point_labels [1, N],
    mask_input [1, 1, 256, 256], has_mask_input [1], orig_im_size [2] (H, W).
    Outputs: masks [1, K, H, W] logits, iou_predictions [1, K], low_res_masks [1, K, 256, 256], where K is 1
    with return_single_mask and num_mask_tokens (4) otherwise; with return_extra_metrics also
    stability_scores [1, K] and areas [1, K] (before low_res_masks, as in Meta's exporter).
    """

    def __init__(
        self,
        model: SamDecoderParts,
        return_single_mask: bool,
        use_stability_score: bool = False,
        return_extra_metrics: bool = False,
        stability_score_offset: float = 1.0,
    ) -> None:
        super().__init__()
        self.mask_decoder = model.mask_decoder
        self.image_size = model.image_size
        self.mask_threshold = model.mask_threshold
        self.prompts = PromptEmbedder(model.prompt_encoder, self.image_size)
        self.return_single_mask = return_single_mask
        self.use_stability_score = use_stability_score
        self.return_extra_metrics = return_extra_metrics
        self.stability_score_offset = stability_score_offset

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        """Low-res logits [1, K, 256, 256] -> logits at the original image size [1, K, H, W]."""
        masks = F.interpolate(masks, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        prepadded_size = resize_longest_image_size(orig_im_size, self.image_size)
        masks = masks[..., : prepadded_size[0], : prepadded_size[1]]
        orig_im_size = orig_im_size.to(torch.int64)
        h, w = orig_im_size[0], orig_im_size[1]
        return F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)

    def select_masks(
        self, masks: torch.Tensor, iou_preds: torch.Tensor, num_points: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick the single-mask token for several points, else the best ambiguity mask (as Meta's export)."""
        # A point prompt plus its padding point means num_points == 2: the multimask outputs (1..3) compete;
        # more points favour token 0 by a large weight.
        score_reweight = torch.tensor([[1000] + [0] * (self.mask_decoder.num_mask_tokens - 1)]).to(iou_preds.device)
        score = iou_preds + (num_points - 2.5) * score_reweight
        best_idx = torch.argmax(score, dim=1)
        masks = masks[torch.arange(masks.shape[0]), best_idx, :, :].unsqueeze(1)
        iou_preds = iou_preds[torch.arange(masks.shape[0]), best_idx].unsqueeze(1)
        return masks, iou_preds

    @torch.no_grad()
    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ):
        sparse_embedding = self.prompts.embed_points(point_coords, point_labels)
        dense_embedding = self.prompts.embed_masks(mask_input, has_mask_input)
        masks, scores = self.mask_decoder.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=self.prompts.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse_embedding,
            dense_prompt_embeddings=dense_embedding,
        )
        if self.use_stability_score:
            scores = calculate_stability_score(masks, self.mask_threshold, self.stability_score_offset)
        if self.return_single_mask:
            masks, scores = self.select_masks(masks, scores, point_coords.shape[1])
        upscaled_masks = self.mask_postprocessing(masks, orig_im_size)
        if self.return_extra_metrics:
            stability_scores = calculate_stability_score(
                upscaled_masks, self.mask_threshold, self.stability_score_offset
            )
            areas = (upscaled_masks > self.mask_threshold).sum(-1).sum(-1)
            return upscaled_masks, scores, stability_scores, areas, masks
        return upscaled_masks, scores, masks
