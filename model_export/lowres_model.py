"""The fast browser decoder: low-resolution logits only, folded attention, a matmul-only upscaling path."""

import torch
import torch.nn as nn
from torch.nn import functional as F

from .folded_attention import FoldedTwoWayTransformer
from .onnx_model import PromptEmbedder, SamDecoderParts


class ChannelsLastUpscaling(nn.Module):
    """
    MaskDecoder.output_upscaling (ConvTranspose 2x2/2, LayerNorm2d, act, ConvTranspose 2x2/2, act) and the
    hypernetwork product, computed on [tokens, channels] rows.

    A 2x2 stride-2 transposed convolution never overlaps, so it is one matmul per input pixel followed by
    a pixel shuffle. Keeping the pixels in row-major tokens through both layers leaves a single transpose
    of the final [K, 256, 256] logits instead of layout changes of the 64- and 32-channel feature maps,
    and turns LayerNorm2d into a LayerNormalization over the last axis.
    """

    def __init__(self, output_upscaling: nn.Sequential) -> None:
        super().__init__()
        conv1, norm, act1, conv2, act2 = list(output_upscaling)
        self.k1 = conv1.kernel_size[0]
        self.k2 = conv2.kernel_size[0]
        if tuple(conv1.kernel_size) != tuple(conv1.stride) or tuple(conv2.kernel_size) != tuple(conv2.stride):
            raise ValueError("channels-last upscaling needs transposed convolutions whose kernel equals the stride")
        self.c1 = conv1.out_channels
        self.c2 = conv2.out_channels
        # ConvTranspose weight [in, out, kh, kw] -> [in, (kh, kw, out)].
        self.register_buffer("w1", conv1.weight.detach().permute(0, 2, 3, 1).reshape(conv1.in_channels, -1).clone())
        self.register_buffer("b1", conv1.bias.detach().repeat(self.k1 * self.k1).clone())
        self.register_buffer("w2", conv2.weight.detach().permute(0, 2, 3, 1).reshape(conv2.in_channels, -1).clone())
        self.register_buffer("b2", conv2.bias.detach().repeat(self.k2 * self.k2).clone())
        self.norm_weight = norm.weight
        self.norm_bias = norm.bias
        self.norm_eps = float(getattr(norm, "eps", 1e-6))
        self.act1 = act1
        self.act2 = act2

    def forward(self, src_tokens: torch.Tensor, hyper_in: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """src_tokens [h*w, C] (row-major pixels), hyper_in [1, K, c2] -> logits [1, K, h*k1*k2, w*k1*k2]."""
        x = src_tokens.reshape(-1, src_tokens.shape[-1]) @ self.w1 + self.b1
        x = x.reshape(-1, self.c1)  # rows: (h, w, i, j)
        x = self.act1(F.layer_norm(x, (self.c1,), self.norm_weight, self.norm_bias, self.norm_eps))
        x = self.act2(x @ self.w2 + self.b2)
        x = x.reshape(-1, self.c2)  # rows: (h, w, i, j, k, l)
        masks = hyper_in[0] @ x.transpose(0, 1)  # [K, h*w*k1*k1*k2*k2]
        num_masks = masks.shape[0]
        masks = masks.reshape(num_masks, height, width, self.k1, self.k1, self.k2, self.k2)
        # Output row = (h*k1 + i)*k2 + k, column = (w*k1 + j)*k2 + l.
        masks = masks.permute(0, 1, 3, 5, 2, 4, 6)
        side = self.k1 * self.k2
        return masks.reshape(1, num_masks, height * side, width * side)


class SamLowResOnnxModel(nn.Module):
    """
    Prompt encoder + mask decoder returning every candidate's low-resolution logits; the client upsamples.

    Inputs: image_embeddings [1, 256, 64, 64], point_coords [1, N, 2], point_labels [1, N],
    mask_input [1, 1, 256, 256], has_mask_input [1].
    Outputs: iou_predictions [1, 4], low_res_masks [1, 4, 256, 256] (index 0 the single-mask token).
    """

    def __init__(self, model: SamDecoderParts) -> None:
        super().__init__()
        decoder = model.mask_decoder
        self.transformer = FoldedTwoWayTransformer(decoder.transformer)
        self.iou_token = decoder.iou_token
        self.mask_tokens = decoder.mask_tokens
        self.num_mask_tokens = decoder.num_mask_tokens
        self.iou_prediction_head = decoder.iou_prediction_head
        self.output_hypernetworks_mlps = decoder.output_hypernetworks_mlps
        self.upscaling = ChannelsLastUpscaling(decoder.output_upscaling)
        self.prompts = PromptEmbedder(model.prompt_encoder, model.image_size)
        image_pe = model.prompt_encoder.get_dense_pe().detach()
        self.register_buffer("image_pe", image_pe.flatten(2)[0].transpose(0, 1).contiguous())

    @torch.no_grad()
    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse_embedding = self.prompts.embed_points(point_coords, point_labels)
        dense_embedding = self.prompts.embed_masks(mask_input, has_mask_input)
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0).unsqueeze(0)
        tokens = torch.cat((output_tokens, sparse_embedding), dim=1)
        src = image_embeddings + dense_embedding
        _, _, height, width = src.shape
        image_tokens = src.flatten(2)[0].transpose(0, 1)  # [HW, C]
        hs, src_tokens = self.transformer(image_tokens, self.image_pe, tokens)
        iou_predictions = self.iou_prediction_head(hs[:, 0, :])
        hyper_in = torch.stack([mlp(hs[:, 1 + i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        low_res_masks = self.upscaling(src_tokens, hyper_in, height, width)
        return iou_predictions, low_res_masks
