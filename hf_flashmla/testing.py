"""Helpers shared by the tests, the demo and benchmarks: random paged inputs and a dense float64
attention computed straight from the definition (no chunking, no online softmax)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from hf_flashmla.schedule import PAGE_SIZE

HEAD_DIM = 576
HEAD_DIM_V = 512


@dataclass
class PagedInputs:
    q: torch.Tensor              # [b, s_q, h_q, d]
    k_cache: torch.Tensor        # [num_blocks, 64, h_kv, d]
    block_table: torch.Tensor    # int32 [b, max_blocks], -1 past each sequence's pages
    cache_seqlens: torch.Tensor  # int32 [b]


def make_paged_inputs(lengths, s_q: int, h_q: int, h_kv: int = 1, dtype=torch.bfloat16, device="cpu",
                      seed: int = 0, spare_blocks: int = 3, spare_columns: int = 1,
                      head_dim: int = HEAD_DIM) -> PagedInputs:
    """Random q and pool (standard normal, every page filled, unused ones too); each sequence gets
    ceil(len / 64) pages drawn from a random permutation of the pool, so a sequence's pages are
    scattered and out of order. spare_blocks pages are never referenced; spare_columns extra
    block_table columns are padding (-1)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [int(n) for n in lengths]
    pages_per_seq = [-(-n // PAGE_SIZE) for n in lengths]
    num_blocks = sum(pages_per_seq) + spare_blocks
    max_blocks = max(pages_per_seq, default=0) + spare_columns
    permutation = torch.randperm(num_blocks, generator=generator)
    block_table = torch.full((len(lengths), max_blocks), -1, dtype=torch.int32)
    next_page = 0
    for i, pages in enumerate(pages_per_seq):
        block_table[i, :pages] = permutation[next_page:next_page + pages].to(torch.int32)
        next_page += pages
    q = torch.randn(len(lengths), s_q, h_q, head_dim, generator=generator)
    k_cache = torch.randn(num_blocks, PAGE_SIZE, h_kv, head_dim, generator=generator)
    return PagedInputs(q=q.to(dtype=dtype, device=device), k_cache=k_cache.to(dtype=dtype, device=device),
                       block_table=block_table.to(device), cache_seqlens=torch.tensor(lengths, dtype=torch.int32,
                                                                                       device=device))


def scale_pages(inputs: PagedInputs, multiplier_of) -> PagedInputs:
    """The inputs with each sequence's keys (and values: one latent) scaled page by page, by multiplier_of(sequence,
    logical page): scores that grow along a sequence or jump between pages, which random keys of one scale never
    give (a kernel's running max settles on the first pages)."""
    factors = torch.ones(inputs.k_cache.shape[0], dtype=torch.float32)
    table = inputs.block_table.cpu()
    for i, length in enumerate(inputs.cache_seqlens.tolist()):
        for j in range(-(-length // PAGE_SIZE)):
            factors[table[i, j]] = multiplier_of(i, j)
    scaled = inputs.k_cache.float() * factors.to(inputs.k_cache.device).view(-1, 1, 1, 1)
    return dataclasses.replace(inputs, k_cache=scaled.to(inputs.k_cache.dtype))


def dense_attention(q, k_cache, block_table, cache_seqlens, head_dim_v: int = HEAD_DIM_V,
                    softmax_scale: float | None = None, causal: bool = False):
    """softmax(scale * Q K^T) V in float64 over each sequence's gathered keys.
    Returns (out float64 [b, s_q, h_q, dv], lse float64 [b, h_q, s_q]); out = 0, lse = +inf for a
    query that sees no key."""
    batch, s_q, h_q, head_dim = q.shape
    h_kv = k_cache.shape[2]
    group = h_q // h_kv
    scale = head_dim ** -0.5 if softmax_scale is None else softmax_scale
    out = torch.zeros(batch, s_q, h_q, head_dim_v, dtype=torch.float64)
    lse = torch.full((batch, h_q, s_q), float("inf"), dtype=torch.float64)
    for i in range(batch):
        length = int(cache_seqlens[i])
        if length == 0:
            continue
        pages = block_table[i, :-(-length // PAGE_SIZE)].long().cpu()
        keys = k_cache.cpu()[pages].reshape(-1, h_kv, head_dim)[:length].double()  # [L, h_kv, d]
        keys_per_q_head = keys.repeat_interleave(group, dim=1)                      # [L, h_q, d]
        scores = torch.einsum("thd,lhd->htl", q[i].cpu().double(), keys_per_q_head) * scale
        key_pos = torch.arange(length)
        limit = torch.arange(s_q) + (length - s_q) if causal else torch.full((s_q,), length - 1)
        scores = scores.masked_fill(key_pos[None, None, :] > limit[None, :, None], float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)                                 # [h_q, s_q]
        seen = torch.isfinite(row_lse)
        weights = torch.where(seen[..., None], torch.exp(scores - row_lse[..., None]), torch.zeros_like(scores))
        out[i] = torch.einsum("htl,lhd->thd", weights, keys_per_q_head[..., :head_dim_v])
        lse[i] = torch.where(seen, row_lse, torch.full_like(row_lse, float("inf")))
    return out, lse


def fp8_round_trip_cache(config):
    """A transformers DynamicCache whose update() stores and returns each token's latent as an FP8 latent cache
    gives it back (hf_flashmla.fp8_latent.round_trip of [kv_nope, k_rot]): eager attention with it is the exact
    attention over an FP8 cache's keys, for models whose attention caches the latent (DeepSeek-V2 and V3)."""
    from transformers.cache_utils import DynamicCache

    from hf_flashmla import fp8_latent

    class FP8RoundTripCache(DynamicCache):
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            rank = key_states.shape[-1]
            stored = fp8_latent.round_trip(torch.cat((key_states, value_states), dim=-1), rank)
            return super().update(stored[..., :rank], stored[..., rank:], layer_idx, *args, **kwargs)

    return FP8RoundTripCache(config=config.get_text_config(decoder=True))


def left_padded_ids(batch: int, length: int, pads, vocab_size: int, seed: int = 0, device="cpu"):
    """Random prompt ids and their attention mask; row r is left-padded by pads[r] tokens (pad id 0)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids.to(device), mask.to(device)
