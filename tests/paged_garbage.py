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
