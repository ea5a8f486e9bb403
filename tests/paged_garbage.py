"""Paged inputs whose cache holds garbage wherever no sequence reads: the tail of each sequence's last page and
every page of the pool that no sequence uses (a pool from torch.empty, or pages recycled from other sequences).
Shared by the CPU and GPU tests of the rule that nothing past a sequence's length reaches its output."""
import dataclasses

import torch

from hf_flashmla.schedule import PAGE_SIZE


def used_token_mask(inputs) -> torch.Tensor:
    """bool [num_blocks, 64]: True for the cache rows that hold a token within some sequence's length."""
    num_blocks = inputs.k_cache.shape[0]
    used = torch.zeros(num_blocks, PAGE_SIZE, dtype=torch.bool)
    table = inputs.block_table.cpu()
    for i, length in enumerate(inputs.cache_seqlens.cpu().tolist()):
        for j in range(-(-length // PAGE_SIZE)):
            used[int(table[i, j]), :min(PAGE_SIZE, length - j * PAGE_SIZE)] = True
    return used


def fill_past_lengths(inputs, value: float):
    """The same inputs with every cache row outside every sequence's length set to `value` (NaN, inf, ...)."""
    used = used_token_mask(inputs).to(inputs.k_cache.device)
    k_cache = inputs.k_cache.clone()
    k_cache[~used] = value
    return dataclasses.replace(inputs, k_cache=k_cache)


def last_visible_keys(inputs, causal: bool) -> torch.Tensor:
    """int [b, s_q]: the last key each query token sees (-1: none)."""
    batch, s_q = inputs.q.shape[:2]
    lengths = inputs.cache_seqlens.cpu().long()[:, None]
    tokens = torch.arange(s_q)[None, :]
    return (lengths - s_q + tokens) if causal else (lengths - 1).expand(batch, s_q)


def with_nan_query_and_key(inputs, nan_query, nan_key):
    """The same inputs with q[nan_query] (b, t, h) and the cache row of key nan_key (b, key index) all NaN."""
    q = inputs.q.clone()
    q[nan_query] = float("nan")
    k_cache = inputs.k_cache.clone()
    b, key = nan_key
    page = int(inputs.block_table[b, key // PAGE_SIZE])
    k_cache[page, key % PAGE_SIZE] = float("nan")
    return dataclasses.replace(inputs, q=q, k_cache=k_cache)


def expected_nan_rows(inputs, causal: bool, nan_query, nan_key) -> torch.Tensor:
    """bool [b, s_q, h_q]: the queries whose out and lse must be NaN after with_nan_query_and_key: the NaN query
    if it sees any key, and every query of nan_key's sequence. The key must be one that every query of its sequence
    sees: for a query that does not (causal), P = 0 times its NaN value is NaN in P V on every path, FlashMLA's too,
    which is no contract to test."""
    last = last_visible_keys(inputs, causal)
    batch, s_q, h_q = inputs.q.shape[:3]
    nan_rows = torch.zeros(batch, s_q, h_q, dtype=torch.bool)
    b, t, h = nan_query
    nan_rows[b, t, h] = bool(last[b, t] >= 0)
    b, key = nan_key
    assert 0 <= key <= int(last[b].min()), "nan_key: choose a key that every query of its sequence sees"
    nan_rows[b] = True
    return nan_rows


def assert_nan_propagates(run, inputs, causal: bool, nan_query, nan_key):
    """run(inputs, causal) -> (out, lse). NaN reaches exactly the expected rows; every other row equals the clean
    run's, bit for bit (rows that see no key: out = 0, lse = +inf)."""
    clean_out, clean_lse = (t.cpu() for t in run(inputs, causal))
    out, lse = (t.cpu() for t in run(with_nan_query_and_key(inputs, nan_query, nan_key), causal))
    nan_rows = expected_nan_rows(inputs, causal, nan_query, nan_key)
    assert nan_rows.any() and not nan_rows.all()
    out_rows = out.float().isnan().any(dim=-1)       # [b, s_q, h_q]
    lse_rows = lse.isnan().permute(0, 2, 1)           # [b, s_q, h_q]
    assert torch.equal(out_rows, nan_rows), "out: NaN rows differ from the rows that see a NaN"
    assert torch.equal(lse_rows, nan_rows), "lse: NaN rows differ from the rows that see a NaN"
    keep = ~nan_rows
    assert torch.equal(out[keep], clean_out[keep])
    assert torch.equal(lse.permute(0, 2, 1)[keep], clean_lse.permute(0, 2, 1)[keep])
