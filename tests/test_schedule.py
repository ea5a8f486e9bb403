"""The split-KV schedule covers every page exactly once, numbers splits consistently and balances
the parts (checked through schedule.iterate_part, the host mirror of the kernel's loop)."""
import random
from collections import defaultdict

import pytest
import torch

import hf_flashmla
from hf_flashmla import schedule
from hf_flashmla.schedule import PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES


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
GEOMETRIES = [(128, 1, 132), (512, 1, 132), (64, 2, 114), (16, 1, 7), (128, 1, 1)]


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("rows,h_kv,num_sms", GEOMETRIES)
def test_schedule_covers_each_page_once_and_balances(mix, rows, h_kv, num_sms):
    lengths = length_mix(mix, random.Random(f"{mix}-{rows}-{num_sms}"))
    cache_seqlens = torch.tensor(lengths, dtype=torch.int32)
    metadata, num_splits = schedule.compute_schedule(cache_seqlens, rows, h_kv, num_sms=num_sms)

    num_parts = schedule.num_sm_parts_for(rows, h_kv, num_sms)
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
        # Each part gets at most `payload` cost units; a sequence's fixed overhead may straddle the
        # boundary with the previous part, hence the allowance of one overhead.
        total_cost = sum(num_blocks) + SEQUENCE_OVERHEAD_PAGES * batch
        payload = -(-total_cost // num_parts)
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
