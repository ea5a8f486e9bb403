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

Fewer, whole items: an item costs more than its pages (loading Q, the epilogue; a split one also its fp32
partial, read back and merged by the combine kernel), and the balanced cut gives most parts two items (the
end of one sequence, the start of the next) while its payload counts one overhead per sequence. Time
model: a schedule takes its largest part's cost, plus the split cost C (SPLIT_COMBINE_PAGES up to one
64-row tile, SPLIT_COMBINE_PAGES_MANY_ROWS beyond) when its cut is the balanced one. Two other schedules
are taken when their largest part is at most the balanced payload + C:
  - k pieces per sequence (b <= num_sm_parts, k = num_sm_parts // b): part i k + j takes pages
    [j n_i // k, (j + 1) n_i // k) of sequence i, one item per part; parts k b.. get empty items (the rows
    an over-provisioned balanced schedule also ends with: [b-1, pages_{b-1}, b-1, pages_{b-1}, ...]).
    Largest part: ceil(max pages / k) + overhead. k = 1 is one part per sequence, no combine (+1..10% on
    b = 128 equal-length configs); k = 2 at b = 64 on 132 parts: 128 pieces of half a sequence instead of
    132 parts of mostly two items, 1-6.5% faster on all 15 such configs of the benchmark table.
  - snapped (b > num_sm_parts): each balanced bound p * payload moves to the nearer end of the sequence
    that holds it, so whole sequences go to the part where most of their cost was; parts may be empty.
    E.g. 64 sequences of 4K tokens on 33 parts (s_q * h_q = 256): parts of two sequences, 138 pages
    against a payload of 134, and no combine (2-7% faster). Skipped above MAX_SNAPPED_PARTS
    parts (the kernel keeps the bounds in shared memory). Where a part's share is under two sequences the
    nearest ends drift: FlashMLA's sweep at b = 128, lengths 1024 + 2i, on 66 parts snaps some parts to
    three sequences (51 pages), so the balanced cut was taken (3 items, 51 splits). Part p then starts at
    sequence floor(p b / P) instead ("by count") wherever that gives a strictly smaller largest part: two
    whole sequences, 40 pages, no combine; on the H100 112.6 -> 99.4 us (FlashInfer's MLA decode 101.3).

Fewer pieces for little work: where pieces are taken, k is halved while a piece would hold fewer than
min_piece_pages pages, k / 2 >= MIN_PIECES_PER_SEQUENCE and more than half the parts hold a piece
(b min(max pages, k) > parts / 2); the k b pieces are then spread over the parts, part p taking piece
ceil(p k b / parts) (the parts between pieces empty): packed into the first k b parts they were 1-2 us slower
(b1 L4K h128 22.2 us packed, 20.9 spread, 20.8 on a grid of only the busy parts). At 64 query rows per CTA
(s_q * h_q >= 64) each piece writes a 128 KB fp32 partial that the combine reads back, worth more than a page
or two of KV when nearly every CTA writes one at once. On the H100 (the full grid, spare parts empty, pieces
spread; flushed us, rule off -> on, two rounds): b1 h128 L4K 25.7 -> 21.0 (64 -> 33 pieces), L8K 28.8 -> 23.5,
L16K 33.9 -> 30.4; b2 h128 L4K 26.5 -> 23.1, L8K 32.3 -> 29.7; b2 L4K h64 27.1 -> 22.1; b4 h64 L2K 25.3 -> 21.0,
L4K 30.4 -> 26.9; b1 L4K s2 h64 25.7 -> 20.4; b1 h128 s2 L2K 23.4 -> 18.4, L4K 25.6 -> 22.0. Where at most half
the parts had a piece anyway, fewer only cost (measured without that condition): b1 L4K h64 20.7 -> 22.5 (64
pieces on 132 parts), b1 L2K h128 18.7 -> 19.5, b1 L1K h128 15.7 -> 16.8. Not at 16 query rows (b4 L4K h16
23.9 -> 24.4), so below 64 rows min_piece_pages is 0 (off). Beyond two tiles it is 3: b1 L2K s2 h128 gains from
one-page to two-page pieces (above), but b1 L8K s2 h128 lost 1-11% in three timings going from four-page to
eight-page pieces, where one and two tiles gained (b1 L16K h128, b2 L8K h128). The floor of 16 pieces keeps
enough SMs streaming and the combine's one-block-per-row shape (launched where parts >= 8 b, a host-side choice)
fed with splits (b8 L4K h128 at 4 pieces: 42 -> 50 us).

Two implementations give the same tensors bit for bit: compute_schedule_torch (vectorised PyTorch
ops, any device; the ground truth) and the compiled single-CTA kernel torch.ops.hf_flashmla.mla_metadata
(csrc/mla_metadata_kernel.cu: one launch instead of ~46 ops). compute_schedule takes the kernel for
CUDA tensors on an sm_90 device when the extension has it, else PyTorch. The `implementation` argument
overrides: "auto" (default), "torch" (always PyTorch, e.g. to compare), "kernel" (require the kernel:
RuntimeError instead of falling back).

The cost model's constants (ScheduleCosts: the per-sequence overhead, the split cost, the smallest piece) are
arguments with the measured defaults below; benchmarks pass other values to compare schedules.
"""
from __future__ import annotations

import dataclasses

import torch

from hf_flashmla import _ops

PAGE_SIZE = 64
ROWS_PER_TILE = 64  # query rows (s_q * h_q / h_kv folded) per CTA tile
# Fixed cost of a sequence (loading Q, the epilogue, the combine), in pages, placed before its pages.
SEQUENCE_OVERHEAD_PAGES = 5
# Cost of splitting (the combine), in pages; passed to the schedule kernel. Up to 64 query rows per kv head: on the
# H100 a one-part-per-sequence schedule at b = 128, equal lengths, 132 parts (largest cost vs payload: L4K 69 vs 67,
# L8K 133 vs 129, L16K 261 vs 254) was 0.3-11% faster, i.e. splitting cost 4.6-17 pages (payload + C = largest
# cost * measured speed ratio): ~5-8 at h_q*s_q = 16, 6-12 at 32, 9-17 at 64 (more rows: larger fp32 partials).
# 8 is near the low end, so the rule switches only where every measured configuration gained (re-measured against
# 12 and 16: 8 as good or better).
SPLIT_COMBINE_PAGES = 8
# From two 64-row tiles up (s_q*h_q >= 128) a split costs more: each of the tiles' CTAs writes its fp32 partial
# and the combine moves 2-4x the rows. Interleaved three times, whole sequences 16 pages over the payload were
# 1-3% faster on all four table configs where 16 and 8 differ (b64 L16K s2 h128, b128 L8K s2 h128, b128 L16K s1
# h128, b128 L16K s2 h64). Both costs were fitted with fp32 partials, which the kernel writes.
SPLIT_COMBINE_PAGES_MANY_ROWS = 16
# The fewer-pieces rule (module docstring): pieces of fewer pages than this halve k, from 64 query rows per kv head;
# beyond two 64-row tiles (s2 h128: four CTAs read each page) only pieces of one or two pages are halved.
MIN_PIECE_PAGES = 5
MIN_PIECE_PAGES_MANY_TILES = 3
MIN_PIECES_PER_SEQUENCE = 16  # csrc/mla_metadata_core.h's kMinPiecesPerSequence
MAX_SNAPPED_PARTS = 1024  # csrc/mla_metadata_core.h's kMaxSnappedParts
METADATA_WIDTH = 8
DEFAULT_NUM_SMS = 132  # H100 SXM; used where no CUDA device says otherwise
AUTO, TORCH, KERNEL = "auto", "torch", "kernel"
KERNEL_CAPABILITY = (9, 0)  # the extension is compiled for sm_90a only


@dataclasses.dataclass(frozen=True)
class ScheduleCosts:
    """The cost model's constants, in pages (module docstring). The defaults are the measured ones; a benchmark
    passes others to compare schedules (a very negative split_combine_pages gives the plain balanced cut,
    min_piece_pages = 0 turns the fewer-pieces rule off)."""
    sequence_overhead_pages: int = SEQUENCE_OVERHEAD_PAGES
    split_combine_pages: int = SPLIT_COMBINE_PAGES
    split_combine_pages_many_rows: int = SPLIT_COMBINE_PAGES_MANY_ROWS
    min_piece_pages: int = MIN_PIECE_PAGES
    min_piece_pages_many_tiles: int = MIN_PIECE_PAGES_MANY_TILES

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{field.name}: expected an int, got {type(value).__name__}")
        if self.sequence_overhead_pages < 1:
            raise ValueError(f"sequence_overhead_pages: expected >= 1, got {self.sequence_overhead_pages}")
        for name in ("min_piece_pages", "min_piece_pages_many_tiles"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")

    def split_cost(self, num_q_rows_per_kv_head: int) -> int:
        """split_combine_pages up to one 64-row tile, split_combine_pages_many_rows beyond."""
        many_rows = num_q_rows_per_kv_head > ROWS_PER_TILE
        return self.split_combine_pages_many_rows if many_rows else self.split_combine_pages

    def min_piece(self, num_q_rows_per_kv_head: int) -> int:
        """min_piece_pages from one 64-row tile, min_piece_pages_many_tiles beyond two, 0 below one."""
        if num_q_rows_per_kv_head < ROWS_PER_TILE:
            return 0
        return self.min_piece_pages if num_q_rows_per_kv_head <= 2 * ROWS_PER_TILE else self.min_piece_pages_many_tiles


DEFAULT_COSTS = ScheduleCosts()


# Per-device facts that do not change, kept so that get_mla_metadata queries no device property per call (plain
# dicts rather than functools caches, which torch.compile warns about and traces through).
_NUM_SMS: dict = {}
_KERNEL_UNAVAILABLE: dict = {}


def num_sms_of(device: torch.device) -> int:
    """The device's SM count."""
    count = _NUM_SMS.get(device)
    if count is None:
        count = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" \
            else DEFAULT_NUM_SMS
        _NUM_SMS[device] = count
    return count


def num_sm_parts_for(num_q_rows_per_kv_head: int, num_heads_k: int, num_sms: int) -> int:
    num_m_blocks = -(-num_q_rows_per_kv_head // ROWS_PER_TILE)
    return max(1, num_sms // (num_heads_k * num_m_blocks))


def _kernel_unavailable_reason(device: torch.device) -> str | None:
    """Why the schedule kernel cannot run for tensors on `device` (None: it can); fixed per device."""
    if device not in _KERNEL_UNAVAILABLE:
        _KERNEL_UNAVAILABLE[device] = _why_kernel_unavailable(device)
    return _KERNEL_UNAVAILABLE[device]


def _why_kernel_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"device {device} is not a CUDA device"
    if not _ops.metadata_kernel_available():
        return f"the CUDA extension has no mla_metadata op: {_ops.EXTENSION_ERROR or 'built without it'}"
    capability = tuple(torch.cuda.get_device_capability(device))
    if capability != KERNEL_CAPABILITY:
        return f"device {device} has compute capability {capability[0]}.{capability[1]}, the kernel is built for sm_90a"
    return None


def schedule_implementation(device: torch.device, implementation: str = AUTO) -> str:
    """TORCH or KERNEL: what compute_schedule runs for tensors on `device` (see the module docstring)."""
    if implementation == TORCH:
        return TORCH
    if implementation not in (AUTO, KERNEL):
        raise ValueError(f"implementation: expected one of '{AUTO}', '{TORCH}', '{KERNEL}', got {implementation!r}")
    reason = _kernel_unavailable_reason(device)
    if reason is None:
        return KERNEL
    if implementation == KERNEL:
        raise RuntimeError(f"implementation='{KERNEL}' requires the schedule kernel, but {reason}")
    return TORCH


def split_cost_pages(num_q_rows_per_kv_head: int = ROWS_PER_TILE, costs: ScheduleCosts = DEFAULT_COSTS) -> int:
    return costs.split_cost(num_q_rows_per_kv_head)


def min_piece_pages_for(num_q_rows_per_kv_head: int = ROWS_PER_TILE, costs: ScheduleCosts = DEFAULT_COSTS) -> int:
    return costs.min_piece(num_q_rows_per_kv_head)


def compute_schedule(cache_seqlens: torch.Tensor, num_q_rows_per_kv_head: int, num_heads_k: int,
                     num_sms: int | None = None, *, implementation: str = AUTO,
                     costs: ScheduleCosts = DEFAULT_COSTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (tile_scheduler_metadata [P, 8] int32, num_splits [b + 1] int32) on cache_seqlens' device,
    from the kernel or the PyTorch ops (identical results; see the module docstring)."""
    device = cache_seqlens.device
    if num_sms is None:
        num_sms = num_sms_of(device)
    num_parts = num_sm_parts_for(num_q_rows_per_kv_head, num_heads_k, num_sms)
    split_cost = costs.split_cost(num_q_rows_per_kv_head)
    min_pages = costs.min_piece(num_q_rows_per_kv_head)
    if schedule_implementation(device, implementation) == KERNEL:
        return _ops.mla_metadata(cache_seqlens, num_parts, PAGE_SIZE, costs.sequence_overhead_pages, split_cost,
                                 min_pages)
    return compute_schedule_torch(cache_seqlens, num_parts, sequence_overhead_pages=costs.sequence_overhead_pages,
                                  split_combine_pages=split_cost, min_piece_pages=min_pages)


def compute_schedule_torch(cache_seqlens: torch.Tensor, num_parts: int, *,
                           sequence_overhead_pages: int = SEQUENCE_OVERHEAD_PAGES,
                           split_combine_pages: int = SPLIT_COMBINE_PAGES,
                           min_piece_pages: int = MIN_PIECE_PAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """The schedule with vectorised PyTorch ops on cache_seqlens' device (the ground truth).
    split_combine_pages, min_piece_pages: what compute_schedule passes for the query rows
    (ScheduleCosts.split_cost, .min_piece); by default the values at 64 rows. A very negative
    split_combine_pages turns the pieces and snapped schedules off (the plain balanced cut), for timing
    comparisons."""
    device = cache_seqlens.device
    batch = cache_seqlens.shape[0]

    overhead = sequence_overhead_pages
    lengths = cache_seqlens.to(torch.int64).clamp_min(0)
    num_blocks = (lengths + PAGE_SIZE - 1) // PAGE_SIZE
    cost = num_blocks + overhead
    cost_end = torch.cumsum(cost, 0)  # C_i: cost through sequence i
    cost_begin = cost_end - cost  # S_i
    total = cost_end[-1]
    payload = (total + num_parts - 1) // num_parts

    # Part bounds in cost space, p = 0..P: balanced x_p = min(p * payload, total), or the candidate schedule's
    # (pieces or snapped, module docstring) where it fits. Decisions are 0-dim tensors: no host sync.
    part_index = torch.arange(num_parts + 1, device=device, dtype=torch.int64)
    balanced_bounds = torch.minimum(part_index * payload, total)
    if batch <= num_parts:  # k pieces per sequence: part p = i k + j takes piece j of sequence i, the rest empty
        pieces = num_parts // batch
        # Each piece is one item with its own overhead: the largest part is ceil(max pages / k) + overhead.
        largest = (num_blocks.max() + pieces - 1) // pieces + overhead
        piece_index = part_index  # q(p): the piece whose bound is part bound p
        if min_piece_pages > 0:
            full_pieces = pieces
            pieces = fewer_pieces(pieces, num_blocks.max(), largest <= payload + split_combine_pages, min_piece_pages,
                                  batch, num_parts)
            # Where k was halved, the k b pieces are spread over the parts (q(p) = ceil(p k b / P)), not packed
            # into the first ones (module docstring).
            spread_index = (part_index * (pieces * batch) + num_parts - 1) // num_parts
            piece_index = torch.where(pieces < full_pieces, spread_index, part_index)
        in_pieces = piece_index < pieces * batch
        piece_seq = (piece_index // pieces).clamp_max(batch - 1)
        piece = piece_index % pieces
        piece_pages = num_blocks[piece_seq]
        # Piece j starts at page j n // k (its bound in cost space is past the sequence's overhead, j > 0).
        candidate_bounds = torch.where(in_pieces, cost_begin[piece_seq] + torch.where(
            piece > 0, overhead + piece * piece_pages // pieces, 0), total)
    elif num_parts <= MAX_SNAPPED_PARTS:  # each x_p to the nearer end of its sequence (ties to the start)
        holder = torch.searchsorted(cost_end, balanced_bounds, right=True).clamp_max(batch - 1)
        start, end = cost_begin[holder], cost_end[holder]
        nearest_bounds = torch.where(balanced_bounds - start <= end - balanced_bounds, start, end)
        nearest_largest = (nearest_bounds[1:] - nearest_bounds[:-1]).max()
        # Or by count: part p starts at sequence floor(p b / P) (module docstring), where that is strictly smaller.
        first_seq = (part_index[:-1] * batch) // num_parts
        by_count_bounds = torch.cat([cost_begin[first_seq], total.view(1)])
        by_count_largest = (by_count_bounds[1:] - by_count_bounds[:-1]).max()
        use_by_count = by_count_largest < nearest_largest
        candidate_bounds = torch.where(use_by_count, by_count_bounds, nearest_bounds)
        largest = torch.minimum(by_count_largest, nearest_largest)
    else:
        candidate_bounds = None
    if candidate_bounds is not None:
        use_candidate = largest <= payload + split_combine_pages
        bounds = torch.where(use_candidate, candidate_bounds, balanced_bounds)
    else:
        use_candidate = torch.zeros((), dtype=torch.bool, device=device)
        bounds = balanced_bounds
    seq_of_bound = torch.searchsorted(cost_end, bounds, right=True).clamp_max(batch - 1)
    block_of_bound = (bounds - cost_begin[seq_of_bound] - overhead)
    block_of_bound = torch.minimum(block_of_bound.clamp_min(0), num_blocks[seq_of_bound])

    # Splits of sequence i: parts that intersect its page region [S_i + F, C_i) in cost space (balanced),
    # its non-empty pieces (min(pages, k)), one (snapped).
    first_part = (cost_begin + overhead) // payload
    last_part = (cost_end - 1) // payload
    candidate_splits = torch.clamp(num_blocks, max=pieces) if batch <= num_parts else torch.ones_like(num_blocks)
    splits = torch.where(num_blocks > 0, torch.where(use_candidate, candidate_splits, last_part - first_part + 1), 0)
    num_splits = torch.nn.functional.pad(torch.cumsum(splits, 0), (1, 0))

    # begin_split: index of the part's first item among its sequence's splits. Pieces: the non-empty pieces
    # before j, min(j, j n // k) (fewer pages than pieces: one page each); empty parts past the k b pieces keep
    # q(p) - k (b - 1), the rows the balanced cut gives them; snapped: 0.
    begin_seq = seq_of_bound[:-1]
    balanced_split = (part_index[:-1] - first_part[begin_seq]).clamp_min(0)
    if batch <= num_parts:
        j, n = piece[:-1], piece_pages[:-1]
        candidate_split = torch.where(in_pieces[:-1], torch.minimum(j, j * n // pieces),
                                      piece_index[:-1] - pieces * (batch - 1))
    else:
        candidate_split = torch.zeros_like(begin_seq)
    begin_split = torch.where(use_candidate, candidate_split, balanced_split)
    # Few, larger ops on purpose: on a GPU each op is a launch, and this runs once per decode step.
    columns = torch.stack([begin_seq, block_of_bound[:-1], seq_of_bound[1:], block_of_bound[1:], begin_split], dim=1)
    metadata = torch.nn.functional.pad(columns, (0, METADATA_WIDTH - columns.shape[1]))
    return metadata.to(torch.int32), num_splits.to(torch.int32)


def fewer_pieces(pieces: int, max_pages: torch.Tensor, pieces_taken: torch.Tensor, min_piece_pages: int,
                 batch: int, num_parts: int) -> torch.Tensor:
    """k (0-dim int64) after the fewer-pieces rule: halved while pieces are taken, k >= 2 MIN_PIECES_PER_SEQUENCE,
    ceil(max_pages / k) < min_piece_pages and more than half the parts hold a piece (b min(max_pages, k) >
    num_parts / 2); a fixed number of tensor steps, no host sync."""
    k = torch.full((), pieces, dtype=torch.int64, device=max_pages.device)
    for _ in range((pieces // (2 * MIN_PIECES_PER_SEQUENCE)).bit_length()):
        halve = pieces_taken & (k >= 2 * MIN_PIECES_PER_SEQUENCE) & ((max_pages + k - 1) // k < min_piece_pages) & (
            2 * batch * torch.minimum(max_pages, k) > num_parts)
        k = torch.where(halve, k // 2, k)
    return k


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
