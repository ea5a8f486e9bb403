"""Dense attention on K/V expanded from the latent: attention.py's prefill paths."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from hf_flashmla.transformers_integration.mla_adapter import softmax_scale


def dense_attention(module, q_nope, q_pe, key, value, visible):
    """q [b, s, h, *]; key/value [b, h, n, *]; visible bool [b, s, n] or None (plain causal, s == n).
    -> [b, s, h, v]."""
    query = torch.cat((q_nope, q_pe.to(q_nope.dtype)), dim=-1).transpose(1, 2)
    scale = softmax_scale(module)
    if visible is None:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale)
    else:
        # A query that sees no key (padding) would give NaN; let it see key 0 (its output is never used).
        blind = ~visible.any(dim=-1, keepdim=True)
        if key.shape[2] > 0:
            first = torch.zeros_like(visible)
            first[..., 0] = True
            visible = visible | (blind & first)
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=visible[:, None], scale=scale)
        else:
            out = query.new_zeros(query.shape[:-1] + (value.shape[-1],))
    return out.transpose(1, 2)  # [b, s, h, v]


def trailing_causal(module, q_nope, q_pe, key, value):
    """q [1, n, h, *] are the last n of key's L tokens, query i sees keys <= L - n + i: SDPA's lower-right
    causal variant, so no [n, L] mask is built for a block deep into a long row."""
    n, length = q_nope.shape[1], key.shape[2]
    if n == length:
        return dense_attention(module, q_nope, q_pe, key, value, None)
    query = torch.cat((q_nope, q_pe.to(q_nope.dtype)), dim=-1).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=causal_lower_right(n, length),
                                         scale=softmax_scale(module))
    return out.transpose(1, 2)


def causal(s, device):
    return torch.ones(s, s, dtype=torch.bool, device=device).tril()
