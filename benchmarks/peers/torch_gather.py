"""Plain PyTorch baseline: gather each sequence's pages into a dense [max_len, 576] tensor, then two batched
matmuls (bf16/fp16 operands, float32 softmax) with a length / causal mask.

Straightforward on purpose: it is what one writes without a paged-attention kernel. The token index
computation from the block table is part of each call (a decoding step would do it every step).
"""
from __future__ import annotations

import torch

NAME = "torch"


def available():
    return True, ""


def supports(inputs):
    return True, ""


def _step(q, k_cache, block_table, cache_seqlens, max_len, softmax_scale, causal, dv):
    batch, s_q, h_q, d = q.shape
    page = k_cache.shape[1]
    flat = k_cache.view(-1, d)
    positions = torch.arange(max_len, device=q.device)
    pages = block_table[:, positions // page].to(torch.int64)  # [b, max_len]
    token_index = pages * page + (positions % page)
    kv = flat.index_select(0, token_index.reshape(-1)).view(batch, max_len, d)  # dense gather

    q_rows = q.reshape(batch, s_q * h_q, d)  # row r = query token r // h_q, head r % h_q
    scores = torch.bmm(q_rows, kv.transpose(1, 2)).float() * softmax_scale  # [b, s_q*h_q, max_len]
    lengths = cache_seqlens.to(torch.int64)
    limit = lengths.view(batch, 1, 1).expand(batch, s_q, 1)
    if causal:
        query_index = torch.arange(s_q, device=q.device).view(1, s_q, 1)
        limit = limit - s_q + 1 + query_index  # query i sees keys 0 .. L - s_q + i
    visible = positions.view(1, 1, max_len) < limit  # [b, s_q, max_len]
    visible = visible.unsqueeze(2).expand(batch, s_q, h_q, max_len).reshape(batch, s_q * h_q, max_len)
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # -inf where nothing is visible
    probs = torch.exp(scores - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)).unsqueeze(-1))
    out = torch.bmm(probs.to(q.dtype), kv[:, :, :dv])  # [b, s_q*h_q, dv]
    out = out.view(batch, s_q, h_q, dv)
    lse = torch.where(torch.isfinite(lse), lse, torch.full_like(lse, float("inf")))  # FlashMLA: +inf if empty
    lse = lse.view(batch, s_q, h_q).transpose(1, 2).contiguous()
    return out, lse


def make(inputs):
    max_len = max(1, max(inputs["lengths"]))
    args = (inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"], max_len,
            inputs["softmax_scale"], inputs["causal"], inputs["dv"])
    step = lambda: _step(*args)  # noqa: E731
    return {"torch": (step, step)}
