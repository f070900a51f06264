"""
The fast mask decoder: MaskDecoder's maths rearranged for batches of prompts on one image, on CPU and in ONNX.

Used by everything mode (batches of grid points, `decode_point_tokens`) and by the `lowres` ONNX decoder
(model_export wraps it for export). It holds no weights of its own: it reads Meta's MaskDecoder's modules,
and backend/sam/mask_decoder.py stays the reference its results equal up to float rounding.

Every cross-attention pairs T prompt tokens (T = 5 + number of points) with h * w image tokens. The reference
projects all image tokens to the attention width before attending; when heads * T is small it is cheaper to
move each projection onto the token side by associativity:

- token-to-image: softmax(q_h (X W_k,h^T)^T) = softmax((q_h W_k,h) X^T) (the key bias adds a constant per
  row, which softmax ignores), and attn_h (X W_v,h^T + b_v,h) = (attn_h X) W_v,h^T + b_v,h (rows sum to 1);
- image-to-token: (X W_q,h^T + b_q,h) k_h^T = X (W_q,h^T k_h^T) + b_q,h k_h^T, and the output projection
  is applied to the token values before attention: sum_h attn_h (v_h W_o,h^T).

Before the first image-to-token attention every prompt sees the same image, so the image side stays one
[h * w, C] tensor shared by a batch of prompts (forward_batch / upscale_batch: the same with broadcasting ops
only, for the lowres ONNX graph of any number of prompts). That first block's three image-side projections
(its token-to-image keys and values, its image-to-token queries) are products of those shared rows alone:
FirstBlockProducts computes them once per image, and each prompt then attends with [heads, T, d] x [heads, d,
h * w] products instead of [heads * T, C] x [C, h * w] ones (everything mode's chunks; the lowres graph's
per-image outputs, fed back on the next run). The output upscaling runs channels-last (pixels as rows), so
its layer norm works on contiguous channels and the only layout change is the final one of the logits.
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .common import LayerNorm2d
from .mask_decoder import MaskDecoder

# Which mask tokens a caller wants: all of them (the lowres graph) or the three ambiguity-aware ones.
ALL_MASKS = slice(None)
MULTIMASK = slice(1, None)


class FirstBlockProducts(NamedTuple):
    """The first two-way block's projections of the image rows, per head; M is 1 (the rows every prompt without
    a mask prompt shares) or one set per prompt.

    keys [M, heads, d, h * w]: (image + pe) W_k^T of the token-to-image attention, transposed (its bias is left
    out: it adds a constant to each softmax row);
    values [M, heads, h * w, d]: image W_v^T + b_v;
    queries [M, heads, d, h * w]: ((image + pe) W_q^T + b_q) / sqrt(d), the image-to-token attention's
    queries, transposed and scaled.
    """

    keys: torch.Tensor
    values: torch.Tensor
    queries: torch.Tensor


class FoldedMaskDecoder(nn.Module):
    """MaskDecoder.predict_masks for B prompts sharing one image, computed the fast way.

    Image-side tensors are channels-last pixel rows: image [h * w, C] (embedding + dense prompt embedding),
    image_pe [h * w, C].
    """

    def __init__(self, mask_decoder: MaskDecoder) -> None:
        super().__init__()
        if not self.supports(mask_decoder):
            raise ValueError(
                "the folded decoder needs Meta's MaskDecoder layout (a two-way transformer and an output "
                "upscaling of two 2x2 stride-2 transposed convolutions with a LayerNorm2d between them)"
            )
        self.mask_decoder = mask_decoder
        conv1, _, _, conv2, _ = mask_decoder.output_upscaling
        # Both transposed convolutions as [C_in, (a, b, C_out)] matmuls, laid out once. Buffers, so the ONNX
        # export stores them as initializers, which weight quantization sees.
        for name, conv in (("conv1", conv1), ("conv2", conv2)):
            weight, bias = _transposed_conv_2x2_as_matmul(conv)
            self.register_buffer(f"{name}_weight", weight)
            self.register_buffer(f"{name}_bias", bias)
        # For upscale_batch's ONNX form: conv1 with each output pixel's mean over its channels taken out (the
        # layer norm's centring, done by the weights).
        centred = [t.view(*t.shape[:-1], 4, conv1.out_channels) for t in _transposed_conv_2x2_as_matmul(conv1)]
        centred = [(t - t.mean(dim=-1, keepdim=True)).flatten(-2) for t in centred]
        self.register_buffer("conv1_centred_weight", centred[0].contiguous())
        self.register_buffer("conv1_centred_bias", centred[1].contiguous())

    @staticmethod
    def supports(mask_decoder: nn.Module) -> bool:
        """Whether mask_decoder has the layout this rearrangement assumes (every registry model does)."""
        if not isinstance(mask_decoder, MaskDecoder):
            return False
        upscaling = mask_decoder.output_upscaling
        transformer = mask_decoder.transformer
        if len(upscaling) != 5 or not all(hasattr(transformer, a) for a in ("layers", "final_attn_token_to_image")):
            return False
        conv1, norm, _, conv2, _ = upscaling
        return isinstance(norm, LayerNorm2d) and all(
            isinstance(conv, nn.ConvTranspose2d)
            and conv.kernel_size == (2, 2)
            and conv.stride == (2, 2)
            and conv.padding == (0, 0)
            and conv.groups == 1
            and conv.bias is not None
            for conv in (conv1, conv2)
        )

    def forward(
        self,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        first_block: FirstBlockProducts | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer: image [h * w, C], image_pe [h * w, C], sparse [B, N, C]; first_block: that
        image's first_block_products, when a caller decodes several batches on it.

        Returns tokens [B, T, C] (IoU token, mask tokens, prompts) and image tokens [B, h * w, C], or
        [h * w, C] when every prompt sees the same ones (one prompt, or a transformer without blocks).
        """
        tokens = self.mask_decoder.output_tokens(sparse_prompt_embeddings)
        return folded_two_way_transformer(
            self.mask_decoder.transformer, image, image_pe, tokens, first_block=first_block
        )

    def first_block_products(self, image: torch.Tensor, image_pe: torch.Tensor) -> FirstBlockProducts:
        """The first block's image-side projections of image [h * w, C] or [M, h * w, C] with image_pe [h * w, C]:
        once per image, for forward / forward_batch's ``first_block``."""
        return first_block_products(self.mask_decoder.transformer.layers[0], image, image_pe)

    def predict_iou(self, tokens: torch.Tensor, masks: slice = MULTIMASK) -> torch.Tensor:
        """Transformer tokens [B, T, C] -> predicted IoUs [B, k] of the selected mask tokens."""
        iou_pred = self.mask_decoder.iou_prediction_head(tokens[:, 0, :])
        return iou_pred if masks == ALL_MASKS else iou_pred[:, masks]

    def hypernetworks(self, tokens: torch.Tensor, masks: slice = MULTIMASK) -> torch.Tensor:
        """Transformer tokens [B, T, C] -> each selected mask token's pixel weights [B, k, C / 8]."""
        decoder = self.mask_decoder
        indices = range(decoder.num_mask_tokens)[masks]
        return torch.stack([decoder.output_hypernetworks_mlps[i](tokens[:, 1 + i, :]) for i in indices], dim=1)

    def upscale(self, image_tokens: torch.Tensor, hyper_in: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """output_upscaling then the hypernetwork product for one prompt, channels-last.

        image_tokens [h * w, C] (row-major pixels); hyper_in [k, C / 8] -> low-res logits [k, 4h, 4w].
        A 2x2 stride-2 transposed convolution maps each pixel to its 2x2 children independently: one matmul
        [C_in] -> [2, 2, C_out] per pixel, so pixels stay rows through both layers.
        """
        conv1, norm, act1, conv2, act2 = self.mask_decoder.output_upscaling
        # rows (i, j, a, b): [h * w * 4, C / 4]
        x = torch.addmm(self.conv1_bias, image_tokens, self.conv1_weight).view(-1, conv1.out_channels)
        x = _activation(act1, _image_layer_norm(norm, x))
        # rows (i, j, a, b, c, d): [h * w * 16, C / 8]
        x = _activation(act2, torch.addmm(self.conv2_bias, x, self.conv2_weight).view(-1, conv2.out_channels))
        logits = hyper_in @ x.t()  # [k, h * w * 16]
        if not torch.onnx.is_in_onnx_export():
            # One gather by a precomputed order: a 7-d permute copies pairs of floats (8x slower per prompt).
            return logits.index_select(1, _logit_order(height, width)).view(-1, 4 * height, 4 * width)
        # Output row 4i + 2a + c, column 4j + 2b + d.
        logits = logits.view(-1, height, width, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
        return logits.reshape(-1, 4 * height, 4 * width)

    def forward_batch(
        self,
        image: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        first_block: FirstBlockProducts | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer for B prompts with broadcasting only: image [1 or B, h * w, C], image_pe
        [h * w, C], sparse [B, N, C], first_block: first_block_products(image, image_pe), [1 or B, ...]
        -> tokens [B, 1 + num_mask_tokens, C] (the IoU and mask tokens), image tokens [B, h * w, C].

        One traced graph then serves any number of prompts, each with or without its own image rows (a mask
        prompt changes them); see broadcast_two_way_transformer.
        """
        tokens = self.mask_decoder.output_tokens(sparse_prompt_embeddings)
        # Only the IoU and mask tokens are read after the transformer: [B, 1 + num_mask_tokens, C] come back.
        read = 1 + self.mask_decoder.num_mask_tokens
        return broadcast_two_way_transformer(
            self.mask_decoder.transformer, image, image_pe, tokens, read, first_block=first_block
        )

    def upscale_batch(
        self,
        image_tokens: torch.Tensor,
        hyper_in: torch.Tensor,
        height: int,
        width: int,
        extent: torch.Tensor | None = None,
        row_blocks: int = 1,
    ) -> torch.Tensor:
        """upscale for B prompts at once: image_tokens [B, h * w, C], hyper_in [B, k, C / 8] -> [B, k, 4h, 4w].

        The upscaling is per pixel, so the B prompts' pixels are one [B * h * w, C] matrix through both layers.
        extent (rows, cols) [2]: upscale only the top-left rows x cols of the h x w image tokens, giving
        [B, k, 4 rows, 4 cols], the same logits as that corner of the whole. Each token's 4 x 4 logits depend on
        that token alone (2x2 stride-2 convolutions, a per-pixel norm and GELUs, a per-pixel product), and a
        client that crops the padding of the 1024 frame reads only the tokens under the image.
        row_blocks (the ONNX form only): upscale the token rows in this many blocks, one after the other, giving
        the same logits. onnxruntime frees a block's [B * rows * w * 16, C / 8] features before the next, so a
        decode's high-water (which a WebAssembly memory keeps for good) holds one block's, not the whole map's.
        """
        conv1, norm, act1, conv2, act2 = self.mask_decoder.output_upscaling
        batch, _, channels = image_tokens.shape
        if extent is not None:
            corner = image_tokens.reshape(batch, height, width, channels)[:, : extent[0], : extent[1]]
            height, width = corner.shape[1], corner.shape[2]
            image_tokens = corner.reshape(batch, -1, channels)
        if row_blocks > 1 and _plain_gelus(act1, act2):
            # Blocks of whole token rows (possibly none, for fewer rows than blocks), concatenated along the height.
            rows = image_tokens.reshape(batch, height, width, channels)
            edges = [height * i // row_blocks for i in range(row_blocks + 1)]
            blocks = [rows[:, start:end] for start, end in zip(edges[:-1], edges[1:], strict=True)]
            upscaled = [
                self._upscale_batch_folded(block.reshape(batch, -1, channels), hyper_in, block.shape[1], width)
                for block in blocks
            ]
            return torch.cat(upscaled, dim=2)
        if _plain_gelus(act1, act2):
            return self._upscale_batch_folded(image_tokens, hyper_in, height, width)
        x = torch.addmm(self.conv1_bias, image_tokens.reshape(-1, channels), self.conv1_weight)
        x = _activation(act1, _image_layer_norm(norm, x.view(-1, conv1.out_channels)))
        x = torch.addmm(self.conv2_bias, x, self.conv2_weight).view(batch, -1, conv2.out_channels)
        logits = hyper_in @ _activation(act2, x).transpose(1, 2)  # [B, k, h * w * 16]
        # Output row 4i + 2a + c, column 4j + 2b + d.
        logits = logits.view(-1, height, width, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
        return logits.reshape(batch, hyper_in.shape[1], 4 * height, 4 * width)

    def _upscale_batch_folded(
        self, image_tokens: torch.Tensor, hyper_in: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """upscale_batch as exported: the layer norm's centring is in conv1's weights, and each GELU is one
        onnxruntime FastGelu (_fast_gelu), the first adding the norm's shift: two passes over the 1-2 M upscaled
        features per prompt where the plain ops took fifteen. Equal to upscale_batch up to float rounding."""
        conv1, norm, _, conv2, _ = self.mask_decoder.output_upscaling
        batch, _, channels = image_tokens.shape
        centred = torch.addmm(self.conv1_centred_bias, image_tokens.reshape(-1, channels), self.conv1_centred_weight)
        x = _fast_gelu(_centred_unshifted_norm(norm, centred.view(-1, conv1.out_channels)), norm.bias)
        x = torch.addmm(self.conv2_bias, x, self.conv2_weight).view(batch, -1, conv2.out_channels)
        logits = hyper_in @ _fast_gelu(x).transpose(1, 2)  # [B, k, h * w * 16]
        # The height is the inferred dimension: it is 0 for a block of no token rows (upscale_batch's row_blocks),
        # and an ONNX Reshape reads a 0 in its shape as "keep the input's dimension".
        logits = logits.view(batch * hyper_in.shape[1], -1, width, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
        return logits.reshape(batch, hyper_in.shape[1], -1, 4 * width)


@functools.lru_cache(maxsize=8)
def _logit_order(height: int, width: int) -> torch.Tensor:
    """For upscale: where each low-res logit of the [4h, 4w] map sits in the rows (i, j, a, b, c, d) of the
    two transposed convolutions (output row 4i + 2a + c, column 4j + 2b + d)."""
    rows = torch.arange(height * width * 16).view(height, width, 2, 2, 2, 2)
    return rows.permute(0, 2, 4, 1, 3, 5).flatten()


def pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """[1, C, h, w] -> channels-last pixel rows [h * w, C]."""
    if x.shape[0] != 1:
        raise ValueError(f"pixel rows of one image, not of a batch of {x.shape[0]}")
    # A reshape, not x[0]: in ONNX indexing is a Gather that copies the tensor on every run.
    return x.reshape(x.shape[1], -1).transpose(0, 1)


class DecodedPoints:
    """A batch of point prompts after the two-way transformer, before the costly mask upscaling.

    iou_pred [B, 3] is known at once, so masks() can upscale only the (point, mask) pairs that pass a filter.
    """

    def __init__(
        self,
        iou_pred: torch.Tensor,
        upscale: Callable[[int, list[int]], torch.Tensor],
        size: tuple[int, int],
        extent: tuple[int, int] | None = None,
    ) -> None:
        # upscale(point, mask indices) -> low-res logits [k, 4 * extent] of that point's masks.
        self.iou_pred = iou_pred
        self._upscale = upscale
        self.size = size
        self.extent = extent or size

    def masks(self, point_index: torch.Tensor, mask_index: torch.Tensor) -> torch.Tensor:
        """Low-res logits [N, 4h, 4w] of the pairs (point_index[i], mask_index[i]), in the order given; outside
        the token extent they were asked for (decode_point_tokens), NaN."""
        height, width = self.size
        rows, cols = 4 * self.extent[0], 4 * self.extent[1]
        out = self.iou_pred.new_empty(len(point_index), 4 * height, 4 * width)
        if (rows, cols) != (4 * height, 4 * width):
            out[:, rows:] = torch.nan
            out[:, :rows, cols:] = torch.nan
        point_index = point_index.tolist()
        mask_index = mask_index.tolist()
        start = 0
        # Upscaled features are computed once per point, shared by that point's masks.
        while start < len(point_index):
            stop = start
            while stop < len(point_index) and point_index[stop] == point_index[start]:
                stop += 1
            out[start:stop, :rows, :cols] = self._upscale(point_index[start], mask_index[start:stop])
            start = stop
        return out


def decode_point_tokens(
    model: nn.Module,
    features: torch.Tensor,
    point_coords: torch.Tensor,
    point_labels: torch.Tensor,
    extent: tuple[int, int] | None = None,
    first_block: FirstBlockProducts | None = None,
) -> DecodedPoints:
    """Runs the prompt encoder and the two-way transformer for a batch of point prompts sharing one image.

    model: a Sam; features [1, C, h, w]; point_coords [B, N, 2] in the resized frame; point_labels [B, N].
    The three multimask outputs, as mask_decoder(multimask_output=True); a decoder the folded path does not
    know (or several images) runs the reference MaskDecoder at once instead.

    extent (rows, cols): upscale only the image tokens [:rows, :cols], the ones under the image (each token's
    4x4 low-res logits are its own: its rows of the two 2x2 stride-2 transposed convolutions, the per-pixel
    norm, GELUs and hypernetwork product), for a caller that reads no logit outside them.

    first_block: image_first_block(model, features), for a caller that decodes several batches on one image.
    """
    decoder = model.mask_decoder
    sparse, dense = model.prompt_encoder(points=(point_coords, point_labels), boxes=None, masks=None)
    image_pe = model.prompt_encoder.get_dense_pe()
    size = tuple(features.shape[-2:])
    if features.shape[0] != 1 or not FoldedMaskDecoder.supports(decoder):
        masks, iou_pred = decoder(
            image_embeddings=features,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        return DecodedPoints(iou_pred, lambda point, indices: masks[point, indices], size)
    folded = FoldedMaskDecoder(decoder)
    tokens, image_tokens = folded(_no_mask_rows(model, features), pixel_rows(image_pe), sparse, first_block)
    hyper_in = folded.hypernetworks(tokens)

    rows, cols = extent or size

    def upscale(point: int, indices: list[int]) -> torch.Tensor:
        pixels = image_tokens if image_tokens.dim() == 2 else image_tokens[point]
        if (rows, cols) != size:
            pixels = pixels.view(*size, -1)[:rows, :cols].reshape(rows * cols, -1)
        return folded.upscale(pixels, hyper_in[point, indices], rows, cols)

    return DecodedPoints(folded.predict_iou(tokens), upscale, size, (rows, cols))


def image_first_block(model: nn.Module, features: torch.Tensor) -> FirstBlockProducts | None:
    """The first block's projections of one image's rows without a mask prompt (features [1, C, h, w]), shared
    by every decode_point_tokens call on it; None where decode_point_tokens does not take the folded path."""
    decoder = model.mask_decoder
    if features.shape[0] != 1 or not FoldedMaskDecoder.supports(decoder):
        return None
    pe = pixel_rows(model.prompt_encoder.get_dense_pe())
    return first_block_products(decoder.transformer.layers[0], _no_mask_rows(model, features), pe)


def _no_mask_rows(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The image rows every point prompt sees: features [1, C, h, w] plus the "no mask" dense embedding."""
    no_mask = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    return pixel_rows(features + no_mask)


def decode_points_multimask(
    model: nn.Module, features: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The three multimask outputs for a batch of point prompts on one image.

    features [1, C, h, w]; point_coords [B, N, 2] in the resized frame; point_labels [B, N].
    Returns low-res logits [B, 3, 4h, 4w] and predicted IoUs [B, 3], as mask_decoder(multimask_output=True).
    """
    decoded = decode_point_tokens(model, features, point_coords, point_labels)
    batch, per_point = decoded.iou_pred.shape
    point_index = torch.arange(batch).repeat_interleave(per_point)
    mask_index = torch.arange(per_point).repeat(batch)
    masks = decoded.masks(point_index, mask_index)
    return masks.view(batch, per_point, *masks.shape[1:]), decoded.iou_pred


def folded_two_way_transformer(
    transformer: nn.Module,
    image: torch.Tensor,
    pe: torch.Tensor,
    tokens: torch.Tensor,
    image_to_token=None,
    read: int | None = None,
    first_block: FirstBlockProducts | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TwoWayTransformer.forward with image [h * w, C] shared by all prompts, pe [h * w, C], tokens [B, T, C].

    Returns tokens [B, T, C] and image tokens [B, h * w, C], or [h * w, C] when they are the same for every
    prompt (B = 1, or no blocks). ``image_to_token`` replaces ``image_to_token_attention`` (the broadcasting
    form of broadcast_two_way_transformer). With ``read``, only the first ``read`` tokens come back, [B, read,
    C]: the final token-to-image attention and norm act on each token alone, so the tokens nobody reads (the
    prompts') skip them. With ``first_block`` (first_block_products of image and pe), the first block attends
    with those per-image projections.
    """
    image_to_token = image_to_token or image_to_token_attention
    queries, keys = tokens, image
    for index, layer in enumerate(transformer.layers):
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + tokens
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        projected = first_block if index == 0 else None
        keys_with_pe = None if projected is not None else keys + pe
        to_image, to_token = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        if projected is not None:
            attn_out = projected_token_to_image_attention(to_image, queries + tokens, projected)
        else:
            attn_out = token_to_image_attention(to_image, queries + tokens, keys_with_pe, keys)
        queries = layer.norm2(queries + attn_out)
        queries = layer.norm3(queries + layer.mlp(queries))
        if projected is not None:
            attn_out = projected_image_to_token_attention(to_token, projected, queries + tokens, queries, keys)
        else:
            attn_out = image_to_token(to_token, keys_with_pe, queries + tokens, queries, keys)
        keys = _image_layer_norm(layer.norm4, attn_out)
    if read is not None:
        queries, tokens = queries[:, :read], tokens[:, :read]
    attn_out = token_to_image_attention(transformer.final_attn_token_to_image, queries + tokens, keys + pe, keys)
    queries = transformer.norm_final_attn(queries + attn_out)
    return queries, keys


def broadcast_two_way_transformer(
    transformer: nn.Module,
    image: torch.Tensor,
    pe: torch.Tensor,
    tokens: torch.Tensor,
    read: int | None = None,
    first_block: FirstBlockProducts | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """folded_two_way_transformer written with broadcasting ops only, for one graph of any batch size.

    image [1 or B, h * w, C] (1: shared by every prompt), pe [h * w, C], tokens [B, T, C] -> tokens [B, T, C]
    and image tokens [B, h * w, C] (tokens [B, read, C] with ``read``). Each prompt's rows are computed as in its
    own run: the prompts meet only in the shared image rows of the first block, which every prompt reads unchanged.
    """
    return folded_two_way_transformer(
        transformer,
        image,
        pe,
        tokens,
        image_to_token=broadcast_image_to_token_attention,
        read=read,
        first_block=first_block,
    )


def broadcast_image_to_token_attention(
    attention: nn.Module,
    image_queries: torch.Tensor,
    tokens: torch.Tensor,
    token_values: torch.Tensor,
    residual: torch.Tensor,
) -> torch.Tensor:
    """image_to_token_attention with image_queries and residual [1 or B, h * w, C], broadcast over the B
    prompts of tokens, token_values [B, T, C] -> [B, h * w, C]; plain MatMul and Add, which ONNX broadcasts."""
    folded_k, key_bias, v = _folded_token_keys(attention, tokens, token_values)
    heads = attention.num_heads
    batch, num_tokens, channels = tokens.shape
    logits = folded_k @ image_queries.transpose(1, 2) + key_bias  # [B, heads * T, h * w]
    attn = _softmax_over_tokens(logits.view(batch, heads, num_tokens, -1)).view(batch, heads * num_tokens, -1)
    head_dim = attention.out_proj.in_features // heads
    o_weight = attention.out_proj.weight.view(channels, heads, head_dim).permute(1, 2, 0)  # [heads, d, C]
    folded_v = (v @ o_weight).reshape(batch, heads * num_tokens, channels) + attention.out_proj.bias / heads
    return attn.transpose(1, 2) @ folded_v + residual


def first_block_products(layer: nn.Module, image: torch.Tensor, pe: torch.Tensor) -> FirstBlockProducts:
    """The image-side projections of a TwoWayAttentionBlock that sees image rows [h * w, C] or [M, h * w, C]
    unchanged (the first block), pe [h * w, C] -> FirstBlockProducts, [1 or M, heads, ...]."""
    if image.dim() == 2:
        image = image.unsqueeze(0)
    with_pe = image + pe
    to_image, to_token = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    keys = _split_heads(with_pe @ to_image.k_proj.weight.t(), to_image.num_heads).transpose(2, 3)
    values = _split_heads(to_image.v_proj(image), to_image.num_heads)
    scale = 1.0 / math.sqrt(to_token.q_proj.out_features // to_token.num_heads)
    queries = F.linear(with_pe, to_token.q_proj.weight * scale, to_token.q_proj.bias * scale)
    return FirstBlockProducts(keys, values, _split_heads(queries, to_token.num_heads).transpose(2, 3))


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[M, n, heads * d] -> [M, heads, n, d]."""
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _heads_major(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, d] -> [heads, B * T, d]: one matrix per head for a product with a per-image [heads, d, n]."""
    return x.transpose(0, 1).reshape(x.shape[1], -1, x.shape[-1])


def projected_token_to_image_attention(
    attention: nn.Module, tokens: torch.Tensor, first_block: FirstBlockProducts
) -> torch.Tensor:
    """Attention(q=tokens, k=image + pe, v=image) of the first block from its per-image projections:
    tokens [B, T, C] -> [B, T, C]. Per prompt and head, [T, d] x [d, h * w] and [T, h * w] x [h * w, d]."""
    heads = attention.num_heads
    batch, num_tokens, _ = tokens.shape
    q = attention.q_proj(tokens)
    head_dim = q.shape[-1] // heads
    q = q.view(batch, num_tokens, heads, head_dim).transpose(1, 2) * (1.0 / math.sqrt(head_dim))  # [B, heads, T, d]
    if first_block.keys.shape[0] == 1 and not torch.onnx.is_in_onnx_export():
        # One image for every prompt: heads-major products, the per-image tensors are not expanded over B.
        attn = torch.softmax(torch.bmm(_heads_major(q), first_block.keys[0]), dim=-1)
        out = torch.bmm(attn, first_block.values[0]).view(heads, batch, num_tokens, head_dim).permute(1, 2, 0, 3)
    else:
        attn = torch.softmax(q @ first_block.keys, dim=-1)  # [B, heads, T, h * w]
        out = (attn @ first_block.values).transpose(1, 2)  # [B, T, heads, d]
    return attention.out_proj(out.reshape(batch, num_tokens, heads * head_dim))


def projected_image_to_token_attention(
    attention: nn.Module,
    first_block: FirstBlockProducts,
    tokens: torch.Tensor,
    token_values: torch.Tensor,
    residual: torch.Tensor,
) -> torch.Tensor:
    """residual + Attention(q=image + pe, k=tokens, v=token_values) of the first block from its per-image
    queries: tokens, token_values [B, T, C], residual [h * w, C] or [1 or B, h * w, C] -> [B, h * w, C]."""
    heads = attention.num_heads
    batch, num_tokens, _ = tokens.shape
    k = _split_heads(attention.k_proj(tokens), heads)  # [B, heads, T, d]
    v = _split_heads(attention.v_proj(token_values), heads)
    pixels = first_block.queries.shape[-1]
    if first_block.queries.shape[0] == 1 and not torch.onnx.is_in_onnx_export():
        logits = torch.bmm(_heads_major(k), first_block.queries[0]).view(heads, batch, num_tokens, pixels)
        attn = torch.softmax(logits, dim=2).transpose(0, 1)
    else:
        attn = _softmax_over_tokens(k @ first_block.queries)  # [B, heads, T, h * w]
    attn = attn.reshape(batch, heads * num_tokens, pixels)
    return _attend_token_values(attention, attn, v, residual, broadcast=torch.onnx.is_in_onnx_export())


def _head_weights(linear: nn.Linear, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear(C -> D) -> weight [heads, D / heads, C], bias [heads, D / heads]."""
    out_features, in_features = linear.weight.shape
    return (
        linear.weight.reshape(num_heads, out_features // num_heads, in_features),
        linear.bias.reshape(num_heads, out_features // num_heads),
    )


def token_to_image_attention(
    attention: nn.Module, tokens: torch.Tensor, image_keys: torch.Tensor, image_values: torch.Tensor
) -> torch.Tensor:
    """Attention(q=tokens, k=image_keys, v=image_values), folded.

    tokens [B, T, C]; image_keys, image_values [h * w, C] (shared) or [B, h * w, C] -> [B, T, C].
    The key bias adds a constant per softmax row and the value projection commutes with the attention
    average (its rows sum to 1), so the image tokens are only multiplied by [C, heads * T] matrices.
    """
    heads = attention.num_heads
    k_weight, _ = _head_weights(attention.k_proj, heads)
    v_weight, v_bias = _head_weights(attention.v_proj, heads)
    batch, num_tokens, channels = tokens.shape
    head_dim = k_weight.shape[1]
    q = attention.q_proj(tokens).view(batch, num_tokens, heads, head_dim).transpose(1, 2)  # [B, heads, T, d]
    folded_q = (q @ k_weight).reshape(batch, heads * num_tokens, channels) * (1.0 / math.sqrt(head_dim))
    if image_keys.dim() == 2:
        logits = (folded_q.reshape(-1, channels) @ image_keys.t()).view(batch, heads * num_tokens, -1)
    else:
        logits = folded_q @ image_keys.transpose(1, 2)  # [B, heads * T, h * w]
    attn = torch.softmax(logits, dim=-1)
    if image_values.dim() == 2:
        pooled = (attn.reshape(-1, attn.shape[-1]) @ image_values).view(batch, heads, num_tokens, channels)
    else:
        pooled = (attn @ image_values).view(batch, heads, num_tokens, channels)
    out = pooled @ v_weight.transpose(1, 2) + v_bias.unsqueeze(1)  # [B, heads, T, d]
    return attention.out_proj(out.transpose(1, 2).reshape(batch, num_tokens, heads * head_dim))


def image_to_token_attention(
    attention: nn.Module,
    image_queries: torch.Tensor,
    tokens: torch.Tensor,
    token_values: torch.Tensor,
    residual: torch.Tensor,
) -> torch.Tensor:
    """residual + Attention(q=image_queries, k=tokens, v=token_values), folded.

    image_queries and residual [h * w, C] (shared) or [B, h * w, C]; tokens, token_values [B, T, C]
    -> [B, h * w, C]. The query projection is folded into the token keys and the output projection into the
    token values, so no image-sized tensor is projected or split into heads.
    """
    folded_k, key_bias, v = _folded_token_keys(attention, tokens, token_values)
    heads = attention.num_heads
    batch, num_tokens, channels = tokens.shape
    # Logits are laid out [B, heads * T, h * w]: a softmax over T then runs across long contiguous rows,
    # several times faster than over rows of T elements.
    if image_queries.dim() == 2:
        logits = (folded_k.reshape(-1, channels) @ image_queries.t()).view(batch, heads * num_tokens, -1)
        logits = logits + key_bias
    else:
        logits = torch.baddbmm(key_bias, folded_k, image_queries.transpose(1, 2))
    attn = _softmax_over_tokens(logits.view(batch, heads, num_tokens, -1)).view(batch, heads * num_tokens, -1)
    return _attend_token_values(attention, attn, v, residual)


def _folded_token_keys(
    attention: nn.Module, tokens: torch.Tensor, token_values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The token side of an image-to-token attention with its query projection folded in: tokens, token_values
    [B, T, C] -> folded keys [B, heads * T, C] (scaled, so that image rows [h * w, C] times their transpose are
    the logits), their bias [B, heads * T, 1] and the token values v [B, heads, T, d]."""
    heads = attention.num_heads
    q_weight, q_bias = _head_weights(attention.q_proj, heads)
    batch, num_tokens, channels = tokens.shape
    head_dim = q_weight.shape[1]
    scale = 1.0 / math.sqrt(head_dim)
    k = attention.k_proj(tokens).view(batch, num_tokens, heads, head_dim).transpose(1, 2)  # [B, heads, T, d]
    v = attention.v_proj(token_values).view(batch, num_tokens, heads, head_dim).transpose(1, 2)
    folded_k = ((k @ q_weight) * scale).reshape(batch, heads * num_tokens, channels)
    key_bias = ((k @ q_bias.unsqueeze(-1)) * scale).reshape(batch, heads * num_tokens, 1)
    return folded_k, key_bias, v


def _attend_token_values(
    attention: nn.Module, attn: torch.Tensor, v: torch.Tensor, residual: torch.Tensor, broadcast: bool = False
) -> torch.Tensor:
    """residual + the image-to-token attention's output: attn [B, heads * T, h * w] (softmax over each head's
    T), token values v [B, heads, T, d], residual [h * w, C] or [B, h * w, C] -> [B, h * w, C]. The output
    projection is applied to the token values before they are averaged. broadcast: as plain MatMul and Add,
    which ONNX broadcasts over a residual [1, h * w, C] shared by B prompts."""
    batch, heads, num_tokens, head_dim = v.shape
    channels = attention.out_proj.weight.shape[0]
    o_weight = attention.out_proj.weight.view(channels, heads, head_dim).permute(1, 2, 0)  # [heads, d, C]
    # Each head's attention sums to 1 over T, so a bias / heads on every folded value adds the bias once.
    folded_v = (v @ o_weight).reshape(batch, heads * num_tokens, channels) + attention.out_proj.bias / heads
    if broadcast:
        return attn.transpose(1, 2) @ folded_v + residual
    if residual.dim() == 3:
        return torch.baddbmm(residual, attn.transpose(1, 2), folded_v)
    if batch == 1:
        # One prompt: the image tokens stay one [h * w, C] matrix, and the residual is the product's addend
        # (in ONNX one Gemm instead of a MatMul and an Add over the image).
        return torch.addmm(residual, attn.view(-1, attn.shape[-1]).transpose(0, 1), folded_v.view(-1, channels))
    # A shared residual is broadcast, not expanded (in ONNX an Expand would copy it [h * w, C] on every run),
    # and added by the product itself: one pass over the [B, h * w, C] result fewer than a product and an Add
    # (bitwise the same sums; 1.7x faster for 64 prompts).
    return torch.baddbmm(residual, attn.transpose(1, 2), folded_v)


def _softmax_over_tokens(logits: torch.Tensor) -> torch.Tensor:
    """softmax over axis 2 of [B, heads, T, h * w].

    In ONNX written out as max, exp, sum and divide: onnxruntime runs a Softmax over an inner axis by
    transposing to the last axis and back, 2.7x slower for this shape ([1, 8, 7, 4096], one thread, 0.80
    against 0.29 ms). torch keeps its fused kernel (one pass over the logits instead of five).
    """
    if not torch.onnx.is_in_onnx_export():
        return torch.softmax(logits, dim=2)
    exp = torch.exp(logits - logits.amax(dim=2, keepdim=True))
    return exp / exp.sum(dim=2, keepdim=True)


def _image_layer_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """norm (a LayerNorm or LayerNorm2d: its weight, bias and eps) over the last axis of pixel rows [..., h * w, C].

    In ONNX written out as mean, centre, mean of squares, reciprocal square root, scale and shift: with the
    division spelled as a Reciprocal onnxruntime does not fuse it back into its LayerNormalization kernel,
    which onnxruntime-web runs at 3.9 ms for [4096, 256] against 1.9 ms for the ten plain ops (Chromium,
    2 threads). The prompt tokens' norms are tiny and keep the fused op.
    """
    if not torch.onnx.is_in_onnx_export():
        return F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)
    centred = x - x.mean(dim=-1, keepdim=True)
    scale = torch.reciprocal(torch.sqrt((centred * centred).mean(dim=-1, keepdim=True) + norm.eps))
    return centred * scale * norm.weight + norm.bias


# GELU's tanh form, 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), as x (A + B x^2) inside the tanh.
_GELU_TANH_A = math.sqrt(2.0 / math.pi)
_GELU_TANH_B = _GELU_TANH_A * 0.044715


def _activation(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """act(x); in ONNX an exact GELU is written out in its tanh form from plain multiplies, adds and a Tanh.

    onnxruntime-web runs the erf GELU (its fused Gelu kernel) at about 7.5 ns per element, a third of the
    upscaling's time on its 2M features; the eight plain element-wise ops take 3.6 ns (Chromium, 2 threads,
    [65536, 32]). The tanh form differs from the erf one by at most 3e-4 (|x| near 2). torch keeps act.
    """
    if not (torch.onnx.is_in_onnx_export() and isinstance(act, nn.GELU) and act.approximate == "none"):
        return act(x)
    inner = x * (x * x * _GELU_TANH_B + _GELU_TANH_A)
    return x * (torch.tanh(inner) + 1.0) * 0.5


def _plain_gelus(*acts: nn.Module) -> bool:
    """In an ONNX export, whether every act is an exact GELU (which upscale_batch exports as FastGelu)."""
    return torch.onnx.is_in_onnx_export() and all(
        isinstance(act, nn.GELU) and act.approximate == "none" for act in acts
    )


class _FastGelu(torch.autograd.Function):
    """GELU in its tanh form of x + bias, exported as one onnxruntime com.microsoft FastGelu node."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.gelu(x if bias is None else x + bias, approximate="tanh")

    @staticmethod
    def symbolic(g, x, bias):
        out = g.op("com.microsoft::FastGelu", x) if bias is None else g.op("com.microsoft::FastGelu", x, bias)
        out.setType(x.type())  # same shape and type as x (the exporter cannot infer a contrib op's)
        return out


def _fast_gelu(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """GELU(x + bias) in its tanh form (see _activation), for the upscaling's ONNX form.

    One onnxruntime FastGelu node instead of seven plain element-wise ops: onnxruntime-web runs it over the
    upscaled features in about half their time (docs/benchmarks.md, exporter version 15), and a bias (the
    layer norm's shift before the first GELU) is added in the same pass.
    """
    return _FastGelu.apply(x, bias)


def _centred_unshifted_norm(norm: nn.Module, centred: torch.Tensor) -> torch.Tensor:
    """norm over the last axis of rows that already have mean 0, without its shift (norm.bias), which the next
    op adds (_image_layer_norm minus the centring and the shift)."""
    scale = torch.reciprocal(torch.sqrt((centred * centred).mean(dim=-1, keepdim=True) + norm.eps))
    return centred * scale * norm.weight


def _transposed_conv_2x2_as_matmul(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """ConvTranspose2d(kernel 2, stride 2) weight [C_in, C_out, 2, 2] -> [C_in, (a, b, C_out)], bias [4 * C_out].

    Pixel rows [P, C_in] @ weight + bias are then the 2x2 children of each pixel, [P * 4, C_out] as a view.
    """
    weight = conv.weight.detach().permute(0, 2, 3, 1).reshape(conv.in_channels, 4 * conv.out_channels)
    return weight.contiguous(), conv.bias.detach().repeat(4)
