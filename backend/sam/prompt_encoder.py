"""Prompt encoder: points, boxes and masks -> sparse [B, N, C] and dense [B, C, 64, 64] embeddings."""

import numpy as np
import torch
import torch.nn as nn

from .common import LayerNorm2d


class PromptEncoder(nn.Module):
    """Embeds prompts for the mask decoder.

    Point labels: 1 foreground, 0 background, -1 padding ("not a point"); box corners use their own two
    learned embeddings. Masks are low-res logits [B, 1, 4 * H_emb, 4 * W_emb].
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        # Order: background point, foreground point, box top-left, box bottom-right.
        self.num_point_embeddings: int = 4
        self.point_embeddings = nn.ModuleList([nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)])
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the embedding grid: [1, C, H_emb, W_emb]."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def get_dense_pe_rows(self) -> torch.Tensor:
        """get_dense_pe() as pixel rows, row-major: [H_emb * W_emb, C]."""
        return self.pe_layer.grid_rows(self.image_embedding_size)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """points [B, N, 2] (x, y in the 1024 frame), labels [B, N] -> [B, N (+1 if pad), C]."""
        points = points + 0.5  # pixel centres
        if pad:
            padding_point = torch.zeros((points.shape[0], 1, 2), device=points.device, dtype=points.dtype)
            padding_label = -torch.ones((labels.shape[0], 1), device=labels.device, dtype=labels.dtype)
            points = torch.cat([points, padding_point], dim=1)
            labels = torch.cat([labels, padding_label], dim=1)
        embedding = self.pe_layer.forward_with_coords(points, self.input_image_size)
        labels = labels[..., None]
        embedding = torch.where(labels == -1, torch.zeros_like(embedding), embedding)
        embedding = embedding + (labels == -1) * self.not_a_point_embed.weight
        embedding = embedding + (labels == 0) * self.point_embeddings[0].weight
        embedding = embedding + (labels == 1) * self.point_embeddings[1].weight
        # Labels 2 and 3 let box corners travel as points (the ONNX decoder interface does this).
        embedding = embedding + (labels == 2) * self.point_embeddings[2].weight
        embedding = embedding + (labels == 3) * self.point_embeddings[3].weight
        return embedding

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes [B, 4] (x0, y0, x1, y1 in the 1024 frame) -> [B, 2, C]."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        top_left = embedding[:, 0, :] + self.point_embeddings[2].weight
        bottom_right = embedding[:, 1, :] + self.point_embeddings[3].weight
        return torch.stack([top_left, bottom_right], dim=1)

    def _embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        return self.mask_downscaling(masks)

    def _get_batch_size(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def _get_device(self) -> torch.device:
        return self.point_embeddings[0].weight.device

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns sparse [B, N, C] (points then box corners) and dense [B, C, H_emb, W_emb] embeddings."""
        batch = self._get_batch_size(points, boxes, masks)
        sparse = torch.empty((batch, 0, self.embed_dim), device=self._get_device())
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)

        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            height, width = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)
        return sparse, dense


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (Fourier features)."""

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """coords [..., 2] normalised to [0, 1] -> [..., 2 * num_pos_feats]."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * np.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an H x W grid: [C, H, W]."""
        height, width = size
        return self.grid_rows(size).view(height, width, -1).permute(2, 0, 1)

    def grid_rows(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an H x W grid as pixel rows, row-major: [H * W, C].

        Computed in that layout, so an exported graph that reads pixel rows holds no transposed copy (onnxruntime
        folds the encoding when a session is created, and keeps every intermediate until it is done).
        """
        height, width = size
        matrix = self.positional_encoding_gaussian_matrix
        grid = torch.ones((height, width), device=matrix.device, dtype=matrix.dtype)
        y_embed = (grid.cumsum(dim=0) - 0.5) / height
        x_embed = (grid.cumsum(dim=1) - 0.5) / width
        return self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1).view(height * width, 2))

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """coords [B, N, 2] in pixels (x, y) of an image of size (H, W) -> [B, N, C]."""
        coords = coords_input.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords.to(torch.float))
