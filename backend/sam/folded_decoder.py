"""
The mask decoder's two-way transformer and output upscaling, rearranged for speed on CPU and in ONNX.

Every cross-attention pairs T prompt tokens (T = 5 + number of points) with h * w image tokens. The reference
projects all image tokens to the attention width before attending; when heads * T is small it is cheaper to
move each projection onto the token side by associativity:

- token-to-image: softmax(q_h (X W_k,h^T)^T) = softmax((q_h W_k,h) X^T) (the key bias adds a constant per
  row, which softmax ignores), and attn_h (X W_v,h^T + b_v,h) = (attn_h X) W_v,h^T + b_v,h (rows sum to 1);
- image-to-token: (X W_q,h^T + b_q,h) k_h^T = X (W_q,h^T k_h^T) + b_q,h k_h^T, and the output projection
  is applied to the token values before attention: sum_h attn_h (v_h W_o,h^T).

Before the first image-to-token attention every prompt sees the same image, so the image side stays one
[h * w, C] tensor shared by a batch of prompts. Results equal MaskDecoder's up to float rounding. Used by
everything mode (batches of grid points) and by the `lowres` ONNX decoder (model_export).
"""

import math

import torch
from torch import nn


def folded_two_way_transformer(
    transformer: nn.Module, image: torch.Tensor, pe: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """TwoWayTransformer.forward with image [h * w, C] shared by all prompts, pe [h * w, C], tokens [B, T, C].

    Returns tokens [B, T, C] and image tokens [B, h * w, C].
    """
    queries, keys = tokens, image
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + tokens
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        keys_with_pe = keys + pe
        attn_out = token_to_image_attention(layer.cross_attn_token_to_image, queries + tokens, keys_with_pe, keys)
        queries = layer.norm2(queries + attn_out)
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(
            image_to_token_attention(layer.cross_attn_image_to_token, keys_with_pe, queries + tokens, queries, keys)
        )
    attn_out = token_to_image_attention(transformer.final_attn_token_to_image, queries + tokens, keys + pe, keys)
    queries = transformer.norm_final_attn(queries + attn_out)
    if keys.dim() == 2:  # no blocks: every prompt sees the same image
        keys = keys.expand(tokens.shape[0], -1, -1)
    return queries, keys


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
    heads = attention.num_heads
    q_weight, q_bias = _head_weights(attention.q_proj, heads)
    batch, num_tokens, channels = tokens.shape
    head_dim = q_weight.shape[1]
    scale = 1.0 / math.sqrt(head_dim)
    k = attention.k_proj(tokens).view(batch, num_tokens, heads, head_dim).transpose(1, 2)  # [B, heads, T, d]
    v = attention.v_proj(token_values).view(batch, num_tokens, heads, head_dim).transpose(1, 2)
    folded_k = (k @ q_weight) * scale  # [B, heads, T, C]
    folded_k = folded_k.reshape(batch, heads * num_tokens, channels)
    key_bias = ((k @ q_bias.unsqueeze(-1)) * scale).reshape(batch, heads * num_tokens, 1)
    # Logits are laid out [B, heads * T, h * w]: a softmax over T then runs across long contiguous rows,
    # several times faster than over rows of T elements.
    if image_queries.dim() == 2:
        logits = (folded_k.reshape(-1, channels) @ image_queries.t()).view(batch, heads * num_tokens, -1)
        logits = logits + key_bias
    else:
        logits = torch.baddbmm(key_bias, folded_k, image_queries.transpose(1, 2))
    attn = torch.softmax(logits.view(batch, heads, num_tokens, -1), dim=2).view(batch, heads * num_tokens, -1)
    o_weight = attention.out_proj.weight.view(channels, heads, head_dim).permute(1, 2, 0)  # [heads, d, C]
    # Each head's attention sums to 1 over T, so a bias / heads on every folded value adds the bias once.
    folded_v = (v @ o_weight).reshape(batch, heads * num_tokens, channels) + attention.out_proj.bias / heads
    return torch.baddbmm(residual.expand(batch, -1, -1), attn.transpose(1, 2), folded_v)


def upscale_masks_channels_last(
    upscaling: nn.Sequential, image_tokens: torch.Tensor, hyper_in: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """output_upscaling then the hypernetwork product for one point, channels-last.

    image_tokens [h * w, C]; hyper_in [k, C / 8] -> low-res logits [k, 4h, 4w].
    A 2x2 stride-2 transposed convolution maps each pixel to its 2x2 children independently: a matmul
    [C_in] -> [2, 2, C_out], so the layer norm can run on contiguous channels.
    """
    conv1, norm, act1, conv2, act2 = upscaling
    x = _transposed_conv_2x2(conv1, image_tokens)  # [h * w * 4, C / 4]
    x = act1(torch.nn.functional.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps))
    x = act2(_transposed_conv_2x2(conv2, x))  # [h * w * 16, C / 8]
    logits = x @ hyper_in.t()  # [(i, j, ki, kj, ki2, kj2), k]
    logits = logits.view(height, width, 2, 2, 2, 2, -1).permute(6, 0, 2, 4, 1, 3, 5)
    return logits.reshape(-1, 4 * height, 4 * width)


def _transposed_conv_2x2(conv: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """ConvTranspose2d(kernel 2, stride 2) on channels-last pixels [P, C_in] -> children [P * 4, C_out]."""
    c_in, c_out = conv.weight.shape[:2]
    weight = conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)
    return torch.addmm(conv.bias.repeat(4), x, weight).view(-1, c_out)
