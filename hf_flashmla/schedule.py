"""Split-KV tile schedule: which SM part processes which (sequence, page) range.

The schedule is computed with vectorised tensor ops on cache_seqlens' own device, so it needs no
host sync and can be captured in a CUDA graph. The CUDA kernel consumes exactly these tensors; the
reference path ignores them (it checks them only).

Format (same shapes and meaning as FlashMLA's first-generation metadata):
  tile_scheduler_metadata: int32 [num_sm_parts, 8], one row per SM part p:
      [begin_batch, begin_block, end_batch, end_block, begin_split, 0, 0, 0]
    Part p processes, for every batch i in begin_batch..end_batch (inclusive), the pages
    [start_i, stop_i) where start_i = begin_block if i == begin_batch else 0 and
    stop_i = end_block if i == end_batch else ceil(len_i / 64). Empty ranges are skipped.
    begin_split is the index, among the splits of begin_batch, of the split this part computes.
  num_splits: int32 [b + 1], exclusive prefix sum of the number of splits of each sequence:
    sequence i is split into num_splits[i+1] - num_splits[i] parts; its partial results occupy
    rows num_splits[i] .. num_splits[i+1]-1 of the combine workspace. A sequence with one split is
    written straight to the output; one with zero splits (length 0) gets out = 0, lse = +inf.

Balancing: each sequence costs ceil(len/64) pages plus a fixed overhead of SEQUENCE_OVERHEAD_PAGES
(loading Q, the epilogue, the combine), placed before its pages. The total cost is cut into
num_sm_parts equal contiguous pieces, so long and short sequences share SMs evenly.
"""
from __future__ import annotations

import torch

PAGE_SIZE = 64
ROWS_PER_TILE = 64  # query rows (s_q * h_q / h_kv folded) per CTA tile
SEQUENCE_OVERHEAD_PAGES = 5
METADATA_WIDTH = 8
DEFAULT_NUM_SMS = 132  # H100 SXM; used where no CUDA device says otherwise


def num_sms_of(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_NUM_SMS


def num_sm_parts_for(num_q_rows_per_kv_head: int, num_heads_k: int, num_sms: int) -> int:
    num_m_blocks = -(-num_q_rows_per_kv_head // ROWS_PER_TILE)
    return max(1, num_sms // (num_heads_k * num_m_blocks))


def compute_schedule(cache_seqlens: torch.Tensor, num_q_rows_per_kv_head: int, num_heads_k: int,
                     num_sms: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (tile_scheduler_metadata [P, 8] int32, num_splits [b + 1] int32) on cache_seqlens' device."""
    device = cache_seqlens.device
    if num_sms is None:
        num_sms = num_sms_of(device)
    num_parts = num_sm_parts_for(num_q_rows_per_kv_head, num_heads_k, num_sms)
    batch = cache_seqlens.shape[0]

    lengths = cache_seqlens.to(torch.int64).clamp_min(0)
    num_blocks = (lengths + PAGE_SIZE - 1) // PAGE_SIZE
    cost = num_blocks + SEQUENCE_OVERHEAD_PAGES
    cost_end = torch.cumsum(cost, 0)  # C_i: cost through sequence i
    cost_begin = cost_end - cost  # S_i
    total = cost_end[-1]
    payload = (total + num_parts - 1) // num_parts

    # Part boundaries in cost space: x_p = min(p * payload, total), p = 0..P.
    part_index = torch.arange(num_parts + 1, device=device, dtype=torch.int64)
    bounds = torch.minimum(part_index * payload, total)
    seq_of_bound = torch.searchsorted(cost_end, bounds, right=True).clamp_max(batch - 1)
    block_of_bound = (bounds - cost_begin[seq_of_bound] - SEQUENCE_OVERHEAD_PAGES)
    block_of_bound = torch.minimum(block_of_bound.clamp_min(0), num_blocks[seq_of_bound])

    # Splits of sequence i: parts that intersect its page region [S_i + F, C_i) in cost space.
    first_part = (cost_begin + SEQUENCE_OVERHEAD_PAGES) // payload
    last_part = (cost_end - 1) // payload
    splits = torch.where(num_blocks > 0, last_part - first_part + 1, 0)
    num_splits = torch.nn.functional.pad(torch.cumsum(splits, 0), (1, 0))

    begin_seq = seq_of_bound[:-1]
    begin_split = (part_index[:-1] - first_part[begin_seq]).clamp_min(0)
    # Few, larger ops on purpose: on a GPU each op is a launch, and this runs once per decode step.
    columns = torch.stack([begin_seq, block_of_bound[:-1], seq_of_bound[1:], block_of_bound[1:], begin_split], dim=1)
    metadata = torch.nn.functional.pad(columns, (0, METADATA_WIDTH - columns.shape[1]))
    return metadata.to(torch.int32), num_splits.to(torch.int32)


def iterate_part(metadata_row, num_blocks):
    """Yields (batch, start_block, stop_block, split_index_in_batch) for one part (host-side mirror of
    the kernel's loop; used by tests to check that the schedule covers every page exactly once)."""
    begin_batch, begin_block, end_batch, end_block, begin_split = (int(v) for v in metadata_row[:5])
    for i in range(begin_batch, end_batch + 1):
        start = begin_block if i == begin_batch else 0
        stop = end_block if i == end_batch else int(num_blocks[i])
        if stop <= start:
            continue
        yield i, start, stop, (begin_split if i == begin_batch else 0)
