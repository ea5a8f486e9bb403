"""PyTorch reference for paged multi-head latent attention decoding: the ground truth and the fallback.

Works on any device. Each sequence gathers only its own pages from the pool, and long sequences are
processed CHUNK_PAGES pages at a time with an online softmax, so peak memory stays bounded by the
chunk size rather than by the pool or the longest sequence. Scores, softmax and the weighted sum of
V are accumulated in float32 whatever the input dtype.

Semantics (FlashMLA's):
  q [b, s_q, h_q, d], k_cache [num_blocks, page_size, h_kv, d]; V is the first head_dim_v values of K.
  Query head h reads kv head h // (h_q // h_kv).
  With causal, query token t (0-based) of a sequence of length L sees keys 0 .. L - s_q + t;
  without causal it sees keys 0 .. L - 1.
  A query that sees no key gets out = 0 and lse = +inf. NaN in q or in a visible key propagates to out and lse
  (whether a query sees a key depends on the lengths and the mask only, never on the values).
  Returns out [b, s_q, h_q, head_dim_v] in q's dtype and lse float32 [b, h_q, s_q] (natural log of
  the sum of exp(softmax_scale * q.k) over the visible keys).
With is_fp8_kvcache, k_cache holds FlashMLA's FP8 layout (hf_flashmla/fp8_latent.py: uint8 or float8_e4m3fn
[num_blocks, page_size, h_kv, 656] for d = 576); each gathered key is dequantized as the kernels do it:
float(e4m3) * scale in float32, rounded to q's dtype (bf16 on the kernels; exact for a float32 q, as the sm_90
kernel reads them for s_q * h_q <= 32: fp8_latent.py), the rope part as stored. The attention itself is the same
float32 computation.
mla_decode_reference checks its inputs (hf_flashmla/validation.py, any latent and page size); the package's own
callers, which have checked them already, call decode_unchecked.
"""
from __future__ import annotations

import torch

from hf_flashmla import fp8_latent, validation

CHUNK_PAGES = 64


def mla_decode_reference(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor,
                         cache_seqlens: torch.Tensor, head_dim_v: int, softmax_scale: float | None = None,
                         causal: bool = False, is_fp8_kvcache: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) as described above; TypeError / ValueError naming the argument for bad inputs."""
    validation.check_reference_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                                      is_fp8_kvcache)
    return decode_unchecked(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal, is_fp8_kvcache)


def decode_unchecked(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor, cache_seqlens: torch.Tensor,
                     head_dim_v: int, softmax_scale: float | None = None, causal: bool = False,
                     is_fp8_kvcache: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """mla_decode_reference for inputs already checked."""
    batch, s_q, h_q, head_dim = q.shape
    page_size, h_kv = k_cache.shape[1], k_cache.shape[2]
    if softmax_scale is None:
        softmax_scale = head_dim ** -0.5

    out = torch.zeros(batch, s_q, h_q, head_dim_v, dtype=q.dtype, device=q.device)
    lse = torch.full((batch, h_q, s_q), float("inf"), dtype=torch.float32, device=q.device)
    # One host copy of the lengths: the page gather needs Python ints anyway.
    lengths = cache_seqlens.tolist()
    for i, length in enumerate(lengths):
        if length <= 0:
            continue
        out_i, lse_i = _decode_one_sequence(q[i], k_cache, block_table[i], length, page_size, h_kv,
                                            head_dim_v, softmax_scale, causal, is_fp8_kvcache)
        out[i] = out_i.to(q.dtype)
        lse[i] = lse_i
    return out, lse


def _decode_one_sequence(q_seq, k_cache, block_row, length, page_size, h_kv, head_dim_v, softmax_scale,
                         causal, is_fp8_kvcache=False):
    """q_seq [s_q, h_q, d] -> (out float32 [s_q, h_q, dv], lse float32 [h_q, s_q])."""
    s_q, h_q, head_dim = q_seq.shape
    group = h_q // h_kv
    device = q_seq.device
    # [h_kv, group, s_q, d]: query head h = kv * group + j reads kv head kv.
    queries = q_seq.to(torch.float32).reshape(s_q, h_kv, group, head_dim).permute(1, 2, 0, 3)
    # Keys visible to query token t: j <= last_visible[t].
    if causal:
        last_visible = torch.arange(s_q, device=device) + (length - s_q)
    else:
        last_visible = torch.full((s_q,), length - 1, device=device)

    running_max = torch.full((h_kv, group, s_q, 1), float("-inf"), dtype=torch.float32, device=device)
    running_sum = torch.zeros((h_kv, group, s_q, 1), dtype=torch.float32, device=device)
    accumulator = torch.zeros((h_kv, group, s_q, head_dim_v), dtype=torch.float32, device=device)

    num_pages = -(-length // page_size)
    for first_page in range(0, num_pages, CHUNK_PAGES):
        page_ids = block_row[first_page:min(first_page + CHUNK_PAGES, num_pages)].to(torch.long)
        first_key = first_page * page_size
        if is_fp8_kvcache:
            stored = k_cache.view(torch.uint8).index_select(0, page_ids)
            stored = stored.reshape(-1, h_kv, stored.shape[-1])[:length - first_key]
            keys = fp8_latent.dequantize(stored, head_dim_v, q_seq.dtype)
        else:
            keys = k_cache.index_select(0, page_ids).reshape(-1, h_kv, head_dim)[:length - first_key]
        keys = keys.to(torch.float32).permute(1, 0, 2)  # [h_kv, n, d]
        key_index = torch.arange(first_key, first_key + keys.shape[1], device=device)

        scores = torch.matmul(queries, keys.unsqueeze(1).transpose(-1, -2)) * softmax_scale
        visible = key_index[None, :] <= last_visible[:, None]  # [s_q, n]
        scores = scores.masked_fill(~visible, float("-inf"))

        new_max = torch.maximum(running_max, scores.amax(dim=-1, keepdim=True))
        # Rows that have seen no key yet keep max = -inf; shift by 0 there to avoid inf - inf.
        shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)
        probs = torch.exp(scores - shift)
        rescale = torch.exp(running_max - shift)
        running_sum = running_sum * rescale + probs.sum(dim=-1, keepdim=True)
        accumulator = accumulator * rescale + torch.matmul(probs, keys[..., :head_dim_v].unsqueeze(1))
        running_max = new_max

    # From the mask, not from running_sum > 0: a NaN sum (NaN in q or a visible key) must stay NaN.
    has_keys = (last_visible >= 0).view(1, 1, s_q, 1)
    out = torch.where(has_keys, accumulator / torch.where(has_keys, running_sum, torch.ones_like(running_sum)),
                      torch.zeros_like(accumulator))
    lse = torch.where(has_keys, running_max + torch.log(running_sum),
                      torch.full_like(running_sum, float("inf")))
    # [h_kv, group, s_q, *] -> out [s_q, h_q, dv], lse [h_q, s_q]
    out = out.permute(2, 0, 1, 3).reshape(s_q, h_q, head_dim_v)
    lse = lse.reshape(h_q, s_q)
    return out, lse
