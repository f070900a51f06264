"""Mask decoder: image embedding + prompt embeddings -> mask logits [B, K, 256, 256] and IoU scores [B, K]."""

import torch
import torch.nn as nn

from .common import LayerNorm2d


class MaskDecoder(nn.Module):
    """Predicts masks with a two-way transformer, an IoU token and `num_multimask_outputs + 1` mask tokens.

    Mask token 0 is the single-mask output; tokens 1..num_multimask_outputs are the ambiguity-aware masks.
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
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs

        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            [MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)]
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings [1 or B, C, H, W], image_pe [1, C, H, W], sparse [B, N, C], dense [B, C, H, W].

        Returns masks [B, K, 4H, 4W] and iou_pred [B, K]; K = 3 if multimask_output else 1.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
        )
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected, :, :], iou_pred[:, selected]

    def output_tokens(self, sparse_prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """The transformer's tokens: IoU token, mask tokens, then the prompts: sparse [B, N, C] -> [B, 1 + K + N, C]."""
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
        return torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask tokens: masks [B, num_mask_tokens, 4H, 4W], iou_pred [B, num_mask_tokens]."""
        tokens = self.output_tokens(sparse_prompt_embeddings)

        # One image embedding serves every prompt in the batch.
        if image_embeddings.shape[0] != tokens.shape[0]:
            src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0)
        else:
            src = image_embeddings
        src = src + dense_prompt_embeddings
        pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        batch, channels, height, width = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]

        src = src.transpose(1, 2).reshape(batch, channels, height, width)
        upscaled = self.output_upscaling(src)
        hyper_in_list: list[torch.Tensor] = [
            mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)
        ]
        hyper_in = torch.stack(hyper_in_list, dim=1)
        batch, channels, height, width = upscaled.shape
        masks = (hyper_in @ upscaled.view(batch, channels, height * width)).view(batch, -1, height, width)

        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred


class MLP(nn.Module):
    """`num_layers` linear layers with `activation` (ReLU) between them: [..., input_dim] -> [..., output_dim].

    SAM 2 uses the same module (keys ``layers.{i}``) in its mask decoder, its two-way transformer and, with GELU,
    in the Hiera blocks.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        hidden = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip([input_dim] + hidden, hidden + [output_dim], strict=True)
        )
        self.sigmoid_output = sigmoid_output
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = self.act(layer(x)) if i < self.num_layers - 1 else layer(x)
        if self.sigmoid_output:
            x = torch.sigmoid(x)
        return x
