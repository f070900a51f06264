"""
The mask decoder's two-way transformer with its image-side projections folded into the few prompt tokens.

Every cross-attention pairs T prompt tokens (T = 5 + number of points) with 64 * 64 image tokens. The
reference projects all image tokens to the attention width (128) before attending; when 8 heads * T is
below 128 it is cheaper to move each projection onto the token side by associativity:

- token-to-image: softmax(q_h (X W_k,h^T)^T) = softmax((q_h W_k,h) X^T) (the key bias adds a constant per
  row, which softmax ignores), and attn_h (X W_v,h^T + b_v,h) = (attn_h X) W_v,h^T + b_v,h (rows sum to 1);
- image-to-token: (X W_q,h^T + b_q,h) k_h^T = X (W_q,h^T k_h^T) + b_q,h k_h^T, and the output projection
  is applied to the token values before attention: sum_h attn_h (v_h W_o,h^T).

The result equals the reference up to float rounding; the image tokens are only ever multiplied by
[256, 8 T] matrices instead of [256, 128] ones, and no image-sized tensor is split into heads.
"""

import math
from typing import Tuple

import torch
import torch.nn as nn


def _head_weights(linear: nn.Linear, num_heads: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear(C -> D) -> weight [heads, D / heads, C], bias [heads, D / heads]."""
    out_features, in_features = linear.weight.shape
    head_dim = out_features // num_heads
    return linear.weight.reshape(num_heads, head_dim, in_features), linear.bias.reshape(num_heads, head_dim)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[T, D] -> [heads, T, D / heads]."""
    return x.reshape(x.shape[0], num_heads, -1).transpose(0, 1)


def token_to_image_attention(
    attention: nn.Module, tokens: torch.Tensor, image_keys: torch.Tensor, image_values: torch.Tensor
) -> torch.Tensor:
    """
    Attention(q=tokens, k=image_keys, v=image_values) of the reference, folded.
    tokens [T, C], image_keys and image_values [HW, C] -> [T, C].
    """
    num_heads = attention.num_heads
    k_weight, _ = _head_weights(attention.k_proj, num_heads)
    v_weight, v_bias = _head_weights(attention.v_proj, num_heads)
    head_dim = k_weight.shape[1]
    q = _split_heads(attention.q_proj(tokens), num_heads)  # [heads, T, d]
    num_tokens = q.shape[1]
    folded_q = (q @ k_weight).reshape(num_heads * num_tokens, -1)  # [heads * T, C]
    attn = torch.softmax((folded_q @ image_keys.transpose(0, 1)) / math.sqrt(head_dim), dim=-1)  # [heads*T, HW]
    pooled = (attn @ image_values).reshape(num_heads, num_tokens, -1)  # [heads, T, C]
    out = pooled @ v_weight.transpose(1, 2) + v_bias.unsqueeze(1)  # [heads, T, d]
    out = out.transpose(0, 1).reshape(num_tokens, -1)
    return attention.out_proj(out)


def image_to_token_attention(
    attention: nn.Module, image_queries: torch.Tensor, tokens: torch.Tensor, token_values: torch.Tensor
) -> torch.Tensor:
    """
    Attention(q=image_queries, k=tokens, v=token_values) of the reference, folded.
    image_queries [HW, C], tokens and token_values [T, C] -> [HW, C].
    """
    num_heads = attention.num_heads
    q_weight, q_bias = _head_weights(attention.q_proj, num_heads)
    head_dim = q_weight.shape[1]
    k = _split_heads(attention.k_proj(tokens), num_heads)  # [heads, T, d]
    v = _split_heads(attention.v_proj(token_values), num_heads)  # [heads, T, d]
    num_tokens = k.shape[1]
    scale = 1.0 / math.sqrt(head_dim)
    folded_k = (q_weight.transpose(1, 2) @ k.transpose(1, 2)) * scale  # [heads, C, T]
    folded_k = folded_k.transpose(0, 1).reshape(q_weight.shape[2], num_heads * num_tokens)  # [C, heads*T]
    key_bias = ((q_bias.unsqueeze(1) @ k.transpose(1, 2)) * scale).reshape(1, num_heads * num_tokens)
    logits = (image_queries @ folded_k + key_bias).reshape(-1, num_heads, num_tokens)
    attn = torch.softmax(logits, dim=-1).reshape(-1, num_heads * num_tokens)  # [HW, heads*T]
    o_weight = attention.out_proj.weight  # [C, heads * d]
    o_weight = o_weight.reshape(o_weight.shape[0], num_heads, head_dim).permute(1, 2, 0)  # [heads, d, C]
    folded_v = (v @ o_weight).reshape(num_heads * num_tokens, -1)  # [heads*T, C]
    return attn @ folded_v + attention.out_proj.bias


class FoldedTwoWayTransformer(nn.Module):
    """
    TwoWayTransformer.forward with folded cross-attentions, for a single prompt (batch 1).

    Inputs: image_tokens [HW, C] (row-major pixels), image_pe [HW, C], point_embedding [1, T, C].
    Outputs: tokens [1, T, C], image tokens [HW, C].
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.layers = transformer.layers
        self.final_attn_token_to_image = transformer.final_attn_token_to_image
        self.norm_final_attn = transformer.norm_final_attn

    def forward(
        self, image_tokens: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        # Token-side blocks are the reference modules ([1, T, C]); image tokens stay [HW, C].
        queries, keys = point_embedding, image_tokens
        for layer in self.layers:
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + point_embedding
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)

            keys_with_pe = keys + image_pe
            attn_out = token_to_image_attention(
                layer.cross_attn_token_to_image, (queries + point_embedding)[0], keys_with_pe, keys
            )
            queries = layer.norm2(queries + attn_out.unsqueeze(0))
            queries = layer.norm3(queries + layer.mlp(queries))

            attn_out = image_to_token_attention(
                layer.cross_attn_image_to_token, keys_with_pe, (queries + point_embedding)[0], queries[0]
            )
            keys = layer.norm4(keys + attn_out)

        attn_out = token_to_image_attention(
            self.final_attn_token_to_image, (queries + point_embedding)[0], keys + image_pe, keys
        )
        queries = self.norm_final_attn(queries + attn_out.unsqueeze(0))
        return queries, keys
