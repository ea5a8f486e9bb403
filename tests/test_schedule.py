"""The split-KV schedule covers every page exactly once, numbers splits consistently and balances
the parts (checked through schedule.iterate_part, the host mirror of the kernel's loop); it gives each
sequence its own part, pieces of sequences or whole sequences exactly when the rules of schedule.py's
docstring say so (checked against a plain Python restatement of the schedule; the rules in
tests/schedule_rules.py)."""
import random
import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch

import hf_flashmla
from hf_flashmla import schedule
from hf_flashmla.schedule import MIN_PIECE_PAGES, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, SPLIT_COMBINE_PAGES
from schedule_rules import one_part_per_sequence, pages_of, piece_of_part, pieces_per_sequence, snapped_bounds

F = SEQUENCE_OVERHEAD_PAGES


def python_schedule(lengths, num_parts, combine_pages=SPLIT_COMBINE_PAGES, min_piece_pages=MIN_PIECE_PAGES):
    """The schedule with Python ints, one part bound at a time (module docstring of schedule.py).
    Returns (rows, num_splits, mode) with mode "pieces", "snapped" or "balanced"."""
    pages = pages_of(lengths)
    batch = len(pages)
    ends, running = [], 0
    for n in pages:
        running += n + F
        ends.append(running)
    begins = [end - n - F for end, n in zip(ends, pages)]
    total = ends[-1]
    payload = -(-total // num_parts)
    snapped = snapped_bounds(lengths, num_parts, combine_pages)
    k = pieces_per_sequence(lengths, num_parts, combine_pages, min_piece_pages)
    if k:
        mode = "pieces"
        qs = [piece_of_part(p, k, batch, num_parts) for p in range(num_parts + 1)]
        bounds = [total if q >= k * batch else begins[q // k] + (F + q % k * pages[q // k] // k if q % k else 0)
                  for q in qs]
    elif snapped is not None:
        mode = "snapped"
        bounds = snapped
    else:
        mode = "balanced"
        bounds = [min(p * payload, total) for p in range(num_parts + 1)]
    seqs = [min(sum(1 for e in ends if e <= x), batch - 1) for x in bounds]
    blocks = [min(max(x - begins[i] - F, 0), pages[i]) for x, i in zip(bounds, seqs)]
    if mode == "balanced":
        first = [(b + F) // payload for b in begins]
        splits = [(e - 1) // payload - f + 1 if n else 0 for e, f, n in zip(ends, first, pages)]
        begin_split = [max(p - first[seqs[p]], 0) for p in range(num_parts)]
    elif mode == "pieces":
        splits = [min(n, k) for n in pages]
        begin_split = [min(q % k, q % k * pages[q // k] // k) if q < k * batch else q - k * (batch - 1)
                       for q in qs[:-1]]
    else:
        splits = [1 if n else 0 for n in pages]
        begin_split = [0] * num_parts
    num_splits = [0]
    for n in splits:
        num_splits.append(num_splits[-1] + n)
    rows = [[seqs[p], blocks[p], seqs[p + 1], blocks[p + 1], begin_split[p], 0, 0, 0] for p in range(num_parts)]
    return rows, num_splits, mode


def length_mix(name, rng):
    if name == "single_zero":
        return [0]
    if name == "single_tiny":
        return [1]
    if name == "single_huge":
        return [131072]
    if name == "all_zero":
        return [0] * 17
    if name == "tiny_and_zero":
        return [rng.choice([0, 1, 2, 63, 64, 65]) for _ in range(40)]
    if name == "huge_among_tiny":
        return [rng.randint(0, 70) for _ in range(30)] + [200000] + [rng.randint(0, 3) for _ in range(30)]
    if name == "uniform_b128":
        return [rng.randint(0, 8192) for _ in range(128)]
    if name == "equal_b128":
        return [4096] * 128
    if name == "skewed_b128":
        return [int(rng.paretovariate(0.8) * 50) % 300000 for _ in range(128)]
    if name == "varlen_b8":
        return [0, 1, 63, 64, 65, 1000, 32768, 7]
    raise AssertionError(name)


MIXES = ["single_zero", "single_tiny", "single_huge", "all_zero", "tiny_and_zero", "huge_among_tiny",
         "uniform_b128", "equal_b128", "skewed_b128", "varlen_b8"]
# (num_q_tokens_per_head_k, num_heads_k, num_sms): decode, MTP/speculative, several kv heads, tiny GPU.
GEOMETRIES = [(16, 1, 132), (128, 1, 132), (512, 1, 132), (64, 2, 114), (16, 1, 7), (128, 1, 1)]


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("rows,h_kv,num_sms", GEOMETRIES)
def test_schedule_covers_each_page_once_and_balances(mix, rows, h_kv, num_sms):
    lengths = length_mix(mix, random.Random(f"{mix}-{rows}-{num_sms}"))
    cache_seqlens = torch.tensor(lengths, dtype=torch.int32)
    metadata, num_splits = schedule.compute_schedule(cache_seqlens, rows, h_kv, num_sms=num_sms)

    num_parts = schedule.num_sm_parts_for(rows, h_kv, num_sms)
    cost, min_pages = schedule.split_cost_pages(rows), schedule.min_piece_pages_for(rows)
    batch = len(lengths)
    assert metadata.dtype == torch.int32 and metadata.shape == (num_parts, schedule.METADATA_WIDTH)
    assert num_splits.dtype == torch.int32 and num_splits.shape == (batch + 1,)
    assert torch.all(metadata[:, 5:] == 0)

    num_blocks = [-(-n // PAGE_SIZE) for n in lengths]
    covered = [[0] * n for n in num_blocks]
    split_indices = defaultdict(list)
    for part in range(num_parts):
        segments = list(schedule.iterate_part(metadata[part], num_blocks))
        pages = 0
        for seq, start, stop, split in segments:
            assert 0 <= start < stop <= num_blocks[seq]
            for page in range(start, stop):
                covered[seq][page] += 1
            split_indices[seq].append(split)
            pages += stop - start
        total_cost = sum(num_blocks) + SEQUENCE_OVERHEAD_PAGES * batch
        payload = -(-total_cost // num_parts)
        k = pieces_per_sequence(lengths, num_parts, cost, min_pages)
        if k:
            # Part i k + j holds piece j of sequence i (if not empty): never more than payload + the combine cost,
            # or, where the fewer-pieces rule halved k, than twice its threshold (+ 1 for an odd k).
            q, next_q = piece_of_part(part, k, batch, num_parts), piece_of_part(part + 1, k, batch, num_parts)
            seq, j = divmod(q, k)
            n = num_blocks[seq] if seq < batch else 0
            piece = [(seq, j * n // k, (j + 1) * n // k)] if (seq < batch and next_q > q
                                                              and (j + 1) * n // k > j * n // k) else []
            assert [(s, start, stop) for s, start, stop, _ in segments] == piece
            assert pages + SEQUENCE_OVERHEAD_PAGES * len(segments) <= max(payload + cost, 2 * min_pages + 1 + F)
        elif snapped_bounds(lengths, num_parts, cost) is not None:
            # Whole sequences, the part's cost (zero-page sequences count their overhead too) within payload
            # + the combine cost.
            assert all(start == 0 and stop == num_blocks[seq] for seq, start, stop, _ in segments)
            assert pages + SEQUENCE_OVERHEAD_PAGES * len(segments) <= payload + cost
        else:
            # Each part gets at most `payload` cost units; a sequence's fixed overhead may straddle the
            # boundary with the previous part, hence the allowance of one overhead.
            assert pages <= payload
            assert pages + SEQUENCE_OVERHEAD_PAGES * len(segments) <= payload + SEQUENCE_OVERHEAD_PAGES

    for seq in range(batch):
        assert covered[seq] == [1] * num_blocks[seq], f"sequence {seq}: pages covered {covered[seq]}"

    splits_per_seq = [int(num_splits[i + 1] - num_splits[i]) for i in range(batch)]
    assert int(num_splits[0]) == 0
    assert num_splits.tolist() == [0] + list(torch.cumsum(torch.tensor(splits_per_seq), 0).tolist())
    for seq in range(batch):
        assert sorted(split_indices[seq]) == list(range(splits_per_seq[seq])), f"sequence {seq}"
        assert (splits_per_seq[seq] == 0) == (lengths[seq] == 0)
    k = pieces_per_sequence(lengths, num_parts, cost, min_pages)
    if snapped_bounds(lengths, num_parts, cost) is not None or k:
        assert max(splits_per_seq) <= max(k, 1)


def test_long_sequence_is_spread_over_all_parts():
    metadata, num_splits = schedule.compute_schedule(torch.tensor([131072], dtype=torch.int32), 128, 1,
                                                     num_sms=132)
    num_parts = metadata.shape[0]
    assert num_parts == 66  # 132 SMs / (1 kv head * 2 tiles of 64 query rows)
    # The payload is rounded up, so the last part may be left with nothing.
    assert num_parts - 1 <= int(num_splits[1]) <= num_parts


def test_get_mla_metadata_is_compute_schedule_on_cache_seqlens_device():
    cache_seqlens = torch.tensor([5, 0, 700], dtype=torch.int32)
    metadata, num_splits = hf_flashmla.get_mla_metadata(cache_seqlens, 2 * 128, 1)
    expected_metadata, expected_splits = schedule.compute_schedule(cache_seqlens, 256, 1)
    assert torch.equal(metadata, expected_metadata) and torch.equal(num_splits, expected_splits)
    assert metadata.device == cache_seqlens.device


def parts_for(rows):
    return schedule.num_sm_parts_for(rows, 1, 132)


@pytest.mark.parametrize("length", [1024, 4096, 8192, 16384])
@pytest.mark.parametrize("rows", [16, 32, 48, 64])
def test_b128_equal_lengths_get_one_part_each(length, rows):
    # On the H100, one part per sequence at b = 128 was 3.6% (h_q*s_q <= 32) to 7.8% (64) faster than
    # 132 balanced parts, which split nearly every sequence in two.
    metadata, num_splits = schedule.compute_schedule(torch.tensor([length] * 128, dtype=torch.int32), rows, 1,
                                                     num_sms=132)
    pages = -(-length // PAGE_SIZE)
    assert metadata.shape == (132, 8)
    assert num_splits.tolist() == list(range(129))  # one split each: no combine
    for part in range(132):
        segments = list(schedule.iterate_part(metadata[part], [pages] * 128))
        assert segments == ([(part, 0, pages, 0)] if part < 128 else []), f"part {part}"
    assert metadata[128:].tolist() == [[127, pages, 127, pages, p - 127, 0, 0, 0] for p in range(128, 132)]


@pytest.mark.parametrize("length", [4096, 8192, 16384])
def test_b64_two_tiles_equal_lengths_get_one_part_each(length):
    # h_q*s_q = 128: 66 parts for 64 sequences (+1.3..3.7% for one part each, clusters of 2).
    _, num_splits = schedule.compute_schedule(torch.tensor([length] * 64, dtype=torch.int32), 128, 1, num_sms=132)
    assert num_splits.tolist() == list(range(65))


@pytest.mark.parametrize("length", [4096, 8192, 16384])
@pytest.mark.parametrize("rows", [16, 32, 64])
def test_b64_on_132_parts_gets_two_pieces_each(length, rows):
    # On the H100, half a sequence per part (128 parts) was 1-6.5% faster than the balanced cut's 132 parts,
    # most of which held two items.
    metadata, num_splits = schedule.compute_schedule(torch.tensor([length] * 64, dtype=torch.int32), rows, 1,
                                                     num_sms=132)
    pages = -(-length // PAGE_SIZE)
    assert num_splits.tolist() == list(range(0, 129, 2))
    for part in range(132):
        segments = list(schedule.iterate_part(metadata[part], [pages] * 64))
        seq, j = divmod(part, 2)
        expected = [(seq, j * pages // 2, (j + 1) * pages // 2, j)] if part < 128 else []
        assert segments == expected, f"part {part}"


@pytest.mark.parametrize("batch,rows,length", [(200, 16, 4096), (128, 256, 16384), (64, 256, 32768)])
def test_whole_sequences_off_where_they_do_not_pay(batch, rows, length):
    # 200 on 132 parts: parts of one or two sequences (138 pages against a payload of 105 + 8); b = 128 of 16K on 33
    # parts: four sequences (1044) against 1013 + 16; b = 64 of 32K on 33 parts: two (1034) against 1003 + 16.
    lengths = [length] * batch
    num_parts = parts_for(rows)
    cost = schedule.split_cost_pages(rows)
    assert not pieces_per_sequence(lengths, num_parts, cost) and snapped_bounds(lengths, num_parts, cost) is None
    _, num_splits = schedule.compute_schedule(torch.tensor(lengths, dtype=torch.int32), rows, 1, num_sms=132)
    assert int(num_splits[-1]) > batch  # some sequence split


@pytest.mark.parametrize("batch,rows,length,per_part", [(64, 256, 4096, 2), (64, 256, 8192, 2), (128, 128, 4096, 2),
                                                        (128, 128, 8192, 2), (128, 256, 4096, 4), (128, 256, 8192, 4),
                                                        (64, 256, 16384, 2), (128, 128, 16384, 2)])
def test_equal_lengths_snap_to_whole_sequences(batch, rows, length, per_part):
    # The benchmark's compute-bound configs where whole sequences fit within payload + the split cost (16 pages
    # from 128 rows): b = 64 of 4K on 33 parts (s_q*h_q = 256) gets parts of two sequences (138 pages against a
    # payload of 134) and no combine; b = 128 of 8K on 33 parts, parts of four (532 against 516).
    lengths = [length] * batch
    num_parts = parts_for(rows)
    pages = -(-length // PAGE_SIZE)
    metadata, num_splits = schedule.compute_schedule(torch.tensor(lengths, dtype=torch.int32), rows, 1, num_sms=132)
    assert num_splits.tolist() == list(range(batch + 1))  # one split each: no combine
    held = [[seq for seq, start, stop, _ in schedule.iterate_part(metadata[part], [pages] * batch)]
            for part in range(num_parts)]
    assert max(len(h) for h in held) == per_part
    assert sorted(seq for h in held for seq in h) == list(range(batch))
    assert torch.all(metadata[:, 4] == 0)


def test_near_equal_short_sequences_snap_by_count():
    # FlashMLA's sweep, lengths 1024 + 2i at b = 128, s_q * h_q = 128 (66 parts): the nearest-end snapping gives some
    # parts three sequences (51 pages) against a payload of 46 cost pages, so it used to fall back to the balanced
    # cut (3 items, 51 splits); part p from sequence floor(p b / P) gives every part one or two whole sequences.
    batch, rows = 128, 128
    lengths = [1024 + 2 * i for i in range(batch)]
    num_parts = parts_for(rows)
    metadata, num_splits = schedule.compute_schedule(torch.tensor(lengths, dtype=torch.int32), rows, 1, num_sms=132)
    assert num_splits.tolist() == list(range(batch + 1))  # whole sequences: no combine
    held = [[seq for seq, _, _, _ in schedule.iterate_part(metadata[part], pages_of(lengths))]
            for part in range(num_parts)]
    assert [h[0] for h in held] == [part * batch // num_parts for part in range(num_parts)]
    assert max(len(h) for h in held) == 2
    assert snapped_bounds(lengths, num_parts, schedule.split_cost_pages(rows)) is not None


@pytest.mark.parametrize("batch,num_parts,length", [(128, 66, 4096), (64, 33, 8192), (128, 33, 8192), (300, 132, 1000)])
def test_by_count_only_where_strictly_smaller(batch, num_parts, length):
    # Equal lengths: the nearest-end bounds already give the fewest sequences per part, and ties keep them (the
    # schedules measured before the by-count candidate existed stay as they were).
    lengths = [length] * batch
    costs = [p + schedule.SEQUENCE_OVERHEAD_PAGES for p in pages_of(lengths)]
    payload = -(-sum(costs) // num_parts)
    nearest = []
    for p in range(num_parts + 1):
        x = min(p * payload, sum(costs))
        i = min(x // costs[0], batch - 1)
        nearest.append(i * costs[0] if x - i * costs[0] <= (i + 1) * costs[0] - x else (i + 1) * costs[0])
    bounds = snapped_bounds(lengths, num_parts, combine_pages=10**9)
    assert bounds == nearest


@pytest.mark.parametrize("mean", [4096, 8192, 16384])
@pytest.mark.parametrize("batch", [64, 128])
def test_uneven_lengths_stay_balanced(batch, mean):
    # The benchmark's varlen draws (normal around L, std L/4): the longest sequence is far above the
    # payload, so the balanced cut stays, every part within the payload.
    generator = torch.Generator().manual_seed(batch * 7 + mean)
    lengths = torch.normal(float(mean), mean / 4.0, size=(batch,), generator=generator).round().clamp_min(1)
    lengths = lengths.to(torch.int32)
    for rows in (16, 64, 128):
        num_parts = parts_for(rows)
        assert not pieces_per_sequence(lengths.tolist(), num_parts)
        metadata, _ = schedule.compute_schedule(lengths, rows, 1, num_sms=132)
        payload = -(-sum(n + F for n in pages_of(lengths.tolist())) // num_parts)
        num_blocks = pages_of(lengths.tolist())
        for part in range(num_parts):
            pieces = schedule.iterate_part(metadata[part], num_blocks)
            assert sum(stop - start for _, start, stop, _ in pieces) <= payload


def test_rule_threshold_is_payload_plus_combine_cost():
    # 127 sequences of one page (cost 6) and one long one, on 132 parts: the long one's cost against the
    # payload + SPLIT_COMBINE_PAGES decides, at the very edge.
    def lengths_for(long_pages):
        return [64] * 127 + [64 * long_pages]

    def margin(long_pages):
        costs = [1 + F] * 127 + [long_pages + F]
        return long_pages + F - (-(-sum(costs) // 132) + SPLIT_COMBINE_PAGES)

    at_edge = next(n for n in range(1, 100) if margin(n) == 0)
    for long_pages, expect_one in ((at_edge, True), (at_edge + 1, False)):
        assert margin(long_pages) == (0 if expect_one else 1)
        lengths = lengths_for(long_pages)
        _, num_splits = schedule.compute_schedule_torch(torch.tensor(lengths, dtype=torch.int32), 132)
        assert (num_splits.tolist() == list(range(129))) == expect_one
        assert one_part_per_sequence(lengths, 132) == expect_one


def test_matches_python_restatement():
    rng = random.Random(20261125)
    seen = {"pieces": 0, "snapped": 0, "balanced": 0}
    for _ in range(400):
        batch = rng.choice([1, 2, 3, 7, 31, 64, 100, 128, 132, 133, 300])
        num_parts = rng.choice([1, 2, 33, 66, 132, 1500])
        kind = rng.choice(["equal", "near_equal", "uniform", "zeros", "one_long"])
        base = rng.choice([0, 1, 64, 65, 1000, 4096, 16384])
        if kind == "equal":
            lengths = [base] * batch
        elif kind == "near_equal":
            lengths = [max(0, base + rng.randint(-300, 300)) for _ in range(batch)]
        elif kind == "uniform":
            lengths = [rng.randint(0, 20000) for _ in range(batch)]
        elif kind == "zeros":
            lengths = [0] * batch
        else:
            lengths = [rng.randint(0, 200) for _ in range(batch)]
            lengths[rng.randrange(batch)] = rng.randint(0, 50000)
        rows, num_splits, mode = python_schedule(lengths, num_parts)
        seen[mode] += 1
        metadata, splits = schedule.compute_schedule_torch(torch.tensor(lengths, dtype=torch.int32), num_parts)
        where = f"parts {num_parts}, b {batch}, {kind}, lengths {lengths[:6]}"
        assert metadata.tolist() == rows, where
        assert splits.tolist() == num_splits, where
    assert min(seen.values()) >= 40, seen  # every mode exercised


def test_max_snapped_parts_matches_the_kernel_header():
    header = (Path(__file__).resolve().parent.parent / "csrc" / "mla_metadata_core.h").read_text()
    match = re.search(r"constexpr int kMaxSnappedParts = (\d+);", header)
    assert match is not None and int(match.group(1)) == schedule.MAX_SNAPPED_PARTS
    match = re.search(r"constexpr int kMinPiecesPerSequence = (\d+);", header)
    assert match is not None and int(match.group(1)) == schedule.MIN_PIECES_PER_SEQUENCE


@pytest.mark.parametrize("batch,length,rows,pieces", [
    (1, 4096, 128, 33),    # 64 pages on 66 parts: 33 pieces of 2 (25.4 -> 21.7-22.3 us at 16 or 33)
    (1, 16384, 128, 33),   # 256 pages: 66 -> 33 pieces of 8 (34.0 -> 32.0 us)
    (2, 4096, 128, 16),    # 33 -> 16 pieces of 4 (26.6 -> 24.6 us)
    (2, 8192, 128, 16),    # 33 -> 16 pieces of 8 (32.2 -> 31.3 us)
    (4, 2048, 64, 16),     # 132 parts: 33 -> 16 pieces of 2 (25.4 -> 22.0 us)
    (4, 4096, 64, 16),     # 33 -> 16 pieces of 4 (30.2 -> 28.1 us)
    (1, 2048, 256, 16),    # s2 h128, 33 parts: 32 -> 16 pieces of 2 (23.7 -> 19.7 us)
    (1, 8192, 256, 33),    # four tiles: pieces of 4 stay (16 of 8: 29.4 -> 29.8-32.6 us)
    (1, 4096, 256, 16),    # four tiles: 33 pieces of 2 -> 16 of 4
    (1, 32768, 128, 66),   # 512 pages: pieces of 8 already
    (1, 4096, 64, 132),    # 64 one-page pieces fill only half the 132 parts (fewer: 20.7 -> 22.5 us)
    (1, 2048, 128, 66),    # 32 of 66 parts busy (fewer: 18.7 -> 19.5 us)
    (1, 1024, 128, 66),    # 16 of 66 (on parts 0-15 instead: 15.7 -> 16.8 us)
    (8, 4096, 128, 8),     # k = 8 < 32: never below the floor of 16 pieces
    (1, 4096, 16, 132),    # 16 rows: the rule is off (b4 L4K h16 slower with fewer pieces)
    (64, 4096, 64, 2),     # the benchmark's b = 64: two pieces of 32 pages, unchanged
])
def test_fewer_pieces_for_little_work(batch, length, rows, pieces):
    lengths = [length] * batch
    metadata, num_splits = schedule.compute_schedule(torch.tensor(lengths, dtype=torch.int32), rows, 1, num_sms=132)
    num_parts = parts_for(rows)
    pages = -(-length // PAGE_SIZE)
    assert pieces_per_sequence(lengths, num_parts, schedule.split_cost_pages(rows),
                               schedule.min_piece_pages_for(rows)) == pieces
    assert num_splits.tolist() == list(range(0, batch * min(pages, pieces) + 1, min(pages, pieces)))
    busy = []
    for part in range(num_parts):
        segments = list(schedule.iterate_part(metadata[part], [pages] * batch))
        q, next_q = piece_of_part(part, pieces, batch, num_parts), piece_of_part(part + 1, pieces, batch, num_parts)
        seq, j = divmod(q, pieces)
        start, stop = j * pages // pieces, (j + 1) * pages // pieces
        held = seq < batch and next_q > q and stop > start
        assert segments == ([(seq, start, stop, min(j, start))] if held else []), part
        busy += [part] if held else []
    if pieces < num_parts // batch:  # halved: the pieces spread over the grid, not packed into its first parts
        assert busy[-1] >= num_parts * (len(busy) - 1) // len(busy)


def test_min_piece_pages_argument_for_timing():
    # costs.min_piece_pages = 0 gives every part a piece again (A/B timing); below 64 rows the rule is off.
    cache_seqlens = torch.tensor([4096], dtype=torch.int32)
    assert int(schedule.compute_schedule(cache_seqlens, 128, 1, num_sms=132)[1][-1]) == 33
    off = schedule.ScheduleCosts(min_piece_pages=0)
    assert int(schedule.compute_schedule(cache_seqlens, 128, 1, num_sms=132, costs=off)[1][-1]) == 64
    cache_seqlens = torch.tensor([4096] * 2, dtype=torch.int32)
    assert int(schedule.compute_schedule(cache_seqlens, 16, 1, num_sms=132)[1][-1]) == 2 * 64
    with pytest.raises(ValueError, match="^min_piece_pages:"):
        schedule.ScheduleCosts(min_piece_pages=-1)
    with pytest.raises(TypeError, match="^sequence_overhead_pages:"):
        schedule.ScheduleCosts(sequence_overhead_pages=2.5)


def test_split_cost_grows_beyond_one_tile():
    # Two 64-row tiles and more: SPLIT_COMBINE_PAGES_MANY_ROWS; b = 128 of 8K on 33 parts (s_q*h_q = 256)
    # snaps to four whole sequences per part (532 pages against a payload of 516) only with it.
    assert schedule.split_cost_pages(64) == SPLIT_COMBINE_PAGES
    assert schedule.split_cost_pages(128) == schedule.SPLIT_COMBINE_PAGES_MANY_ROWS == 16
    lengths = torch.tensor([8192] * 128, dtype=torch.int32)
    _, num_splits = schedule.compute_schedule(lengths, 256, 1, num_sms=132)
    assert int(num_splits[-1]) == 128
    _, num_splits = schedule.compute_schedule_torch(lengths, 33, split_combine_pages=SPLIT_COMBINE_PAGES)
    assert int(num_splits[-1]) > 128


def test_split_combine_argument_for_timing():
    # A very negative split cost (A/B timing of the whole-sequence schedules) gives the balanced cut, which
    # splits; the default snaps (b = 64 of 4K on 33 parts).
    cache_seqlens = torch.tensor([4096] * 64, dtype=torch.int32)
    _, whole = schedule.compute_schedule(cache_seqlens, 256, 1, num_sms=132)
    assert int(whole[-1]) == 64
    never_whole = schedule.ScheduleCosts(split_combine_pages=-(1 << 40), split_combine_pages_many_rows=-(1 << 40))
    _, balanced = schedule.compute_schedule(cache_seqlens, 256, 1, num_sms=132, costs=never_whole)
    assert int(balanced[-1]) > 64


def test_combine_cost_argument_turns_the_rule_off_for_comparisons():
    # The balanced cut alone (what the schedule was before the rule), for A/B timing.
    lengths = [4096] * 128
    _, num_splits = schedule.compute_schedule_torch(torch.tensor(lengths, dtype=torch.int32), 132,
                                                    split_combine_pages=-(1 << 40))
    assert int(num_splits[-1]) == 250
    rows, expected_splits, mode = python_schedule(lengths, 132, combine_pages=-(1 << 40))
    assert mode == "balanced" and num_splits.tolist() == expected_splits


def test_sequence_overhead_argument_for_timing():
    # costs.sequence_overhead_pages (timing experiments) replaces the per-sequence overhead in the cost model:
    # every page still covered once, parts balanced on the new cost.
    batch = 200  # more sequences than parts, not snapped: the balanced cut
    lengths = [4096] * batch
    num_blocks = [64] * batch
    cache_seqlens = torch.tensor(lengths, dtype=torch.int32)
    default_metadata, _ = schedule.compute_schedule(cache_seqlens, 16, 1, num_sms=132)
    costs = schedule.ScheduleCosts(sequence_overhead_pages=2)
    metadata, num_splits = schedule.compute_schedule(cache_seqlens, 16, 1, num_sms=132, costs=costs)
    assert not torch.equal(metadata, default_metadata)
    payload = -(-(sum(num_blocks) + 2 * batch) // 132)
    covered = [[0] * n for n in num_blocks]
    for part in range(132):
        segments = list(schedule.iterate_part(metadata[part], num_blocks))
        pages = sum(stop - start for _, start, stop, _ in segments)
        assert pages + 2 * len(segments) <= payload + 2
        for seq, start, stop, _ in segments:
            for page in range(start, stop):
                covered[seq][page] += 1
    assert covered == [[1] * 64] * batch
    assert int(num_splits[-1]) >= batch


@pytest.mark.parametrize("value,error", [("abc", TypeError), (0, ValueError), (-1, ValueError), (2.5, TypeError),
                                         (True, TypeError)])
def test_sequence_overhead_argument_rejects_bad_values(value, error):
    with pytest.raises(error, match="^sequence_overhead_pages:"):
        schedule.ScheduleCosts(sequence_overhead_pages=value)
