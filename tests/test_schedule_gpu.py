"""The schedule kernel (torch.ops.hf_flashmla.mla_metadata, csrc/mla_metadata_kernel.cu) against
schedule.py's PyTorch schedule, bit for bit, on the GPU; plus CUDA-graph capture, stream order, strided
input, torch.compile and the dispatch that get_mla_metadata takes on CUDA.

Skipped (tests/conftest.py) unless the sm90 kernel is usable. Run on the GPU machine:
    python3 -m pytest -q -m gpu tests/test_schedule_gpu.py
"""
import random

import pytest
import torch

import hf_flashmla
from hf_flashmla import _ops, schedule
from hf_flashmla.schedule import PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES

pytestmark = pytest.mark.gpu

INT32_MAX = 2**31 - 1
SPLIT_COST = schedule.SPLIT_COMBINE_PAGES
MIN_PAGES = schedule.MIN_PIECE_PAGES


@pytest.fixture(autouse=True)
def require_metadata_kernel():
    if not _ops.metadata_kernel_available():
        pytest.fail("the built extension has no mla_metadata op: rebuild it (python3 setup.py build_ext --inplace)")


def poison_allocator():
    """Fill memory the caching allocator hands out next (small pool) with -7, so a word of the outputs the
    kernel fails to write shows up as a mismatch."""
    blocks = [torch.full((128 * 1024,), -7, dtype=torch.int32, device="cuda") for _ in range(16)]
    torch.cuda.synchronize()
    del blocks


def kernel_schedule(cache_seqlens, num_parts):
    return _ops.mla_metadata(cache_seqlens, num_parts, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, schedule.split_cost_pages(),
                             schedule.min_piece_pages_for())


def assert_same(cache_seqlens, num_parts, got, where="", rows=None):
    """got against the PyTorch schedule on the same device and on the CPU, with compute_schedule's split cost and
    fewer-pieces threshold for `rows` query rows per kv head (None: the defaults, as kernel_schedule passes)."""
    row_args = () if rows is None else (rows,)
    costs = dict(split_combine_pages=schedule.split_cost_pages(*row_args),
                 min_piece_pages=schedule.min_piece_pages_for(*row_args))
    expected = schedule.compute_schedule_torch(cache_seqlens, num_parts, **costs)
    expected_cpu = schedule.compute_schedule_torch(cache_seqlens.cpu(), num_parts, **costs)
    got_metadata, got_splits = got
    assert got_metadata.is_cuda and got_metadata.dtype == torch.int32 and got_metadata.shape == (num_parts, 8)
    assert got_splits.dtype == torch.int32 and got_splits.shape == (cache_seqlens.shape[0] + 1,)
    assert torch.equal(expected[0].cpu(), expected_cpu[0]) and torch.equal(expected[1].cpu(), expected_cpu[1])
    lengths = cache_seqlens[:8].tolist()
    assert torch.equal(got_metadata, expected[0]), f"metadata differs: parts {num_parts}, lengths {lengths}.. {where}"
    assert torch.equal(got_splits, expected[1]), f"num_splits differs: parts {num_parts}, lengths {lengths}.. {where}"


def random_lengths(rng, batch):
    kind = rng.choice(["uniform", "short", "zeros", "mostly_zero", "page_edges", "skewed", "one_long", "equal"])
    if kind == "equal":  # one part per sequence where b <= parts (schedule.py's rule)
        return [rng.choice([1, 64, 4096, 16384, rng.randint(0, 100_000)])] * batch
    if kind == "uniform":
        return [rng.randint(0, 100_000) for _ in range(batch)]
    if kind == "short":
        return [rng.randint(0, 200) for _ in range(batch)]
    if kind == "zeros":
        return [0] * batch
    if kind == "mostly_zero":
        return [rng.randint(1, 100_000) if rng.random() < 0.05 else 0 for _ in range(batch)]
    if kind == "page_edges":
        return [max(0, PAGE_SIZE * rng.randint(0, 1560) + rng.choice([-1, 0, 1])) for _ in range(batch)]
    if kind == "skewed":
        return [min(100_000, int(rng.paretovariate(0.7) * 40)) for _ in range(batch)]
    lengths = [rng.randint(0, 300) for _ in range(batch)]
    lengths[rng.randrange(batch)] = 100_000
    return lengths


def test_kernel_matches_torch_on_random_inputs():
    rng = random.Random(1125)
    num_sms = schedule.num_sms_of(torch.device("cuda"))
    for case in range(400):
        batch = min(5000, int(2 ** rng.uniform(0, 12.3)))
        rows = rng.randint(16, 256)  # s_q * h_q / h_kv
        h_kv = rng.choice([1, 1, 1, 2])
        sms = rng.choice([num_sms, num_sms, 114, 7, 1, 264])
        num_parts = schedule.num_sm_parts_for(rows, h_kv, sms)
        cache_seqlens = torch.tensor(random_lengths(rng, batch), dtype=torch.int32, device="cuda")
        poison_allocator()
        got = schedule.compute_schedule(cache_seqlens, rows, h_kv, num_sms=sms, implementation="kernel")
        assert_same(cache_seqlens, num_parts, got, f"(case {case}, b {batch}, rows {rows}, h_kv {h_kv}, sms {sms})",
                    rows=rows)


@pytest.mark.parametrize("batch", [1, 31, 32, 33, 1023, 1024, 1025, 2049, 4096, 5000, 20000])
@pytest.mark.parametrize("num_parts", [1, 66, 132, 1500])
def test_kernel_matches_torch_at_chunk_edges(batch, num_parts):
    # Batches around the CTA's 1024-thread chunks; more parts than threads; lengths clamped (negative) or at
    # int32 max (64-bit sums).
    rng = random.Random(batch * 7 + num_parts)
    for lengths in ([0] * batch, [rng.randint(0, 100_000) for _ in range(batch)],
                    [rng.choice([-3, 0, 1, 64, 65, INT32_MAX]) for _ in range(batch)]):
        cache_seqlens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
        poison_allocator()
        assert_same(cache_seqlens, num_parts, kernel_schedule(cache_seqlens, num_parts))


@pytest.mark.parametrize("batch,num_parts", [(1, 1), (2, 132), (64, 66), (66, 66), (128, 132), (132, 132),
                                             (1025, 1500), (1500, 1500)])
def test_kernel_matches_torch_one_part_per_sequence(batch, num_parts):
    # schedule.py's rule: b <= parts and the largest cost within payload + SPLIT_COMBINE_PAGES; equal or
    # nearly equal lengths, one chunk and several (b > 1024).
    rng = random.Random(batch * 11 + num_parts)
    one_each = 0
    for lengths in ([0] * batch, [64] * batch, [4096] * batch, [16384] * batch,
                    [4096 + rng.randint(-64, 64) for _ in range(batch)]):
        cache_seqlens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
        poison_allocator()
        got = kernel_schedule(cache_seqlens, num_parts)
        assert_same(cache_seqlens, num_parts, got)
        one_each += got[1].tolist() == list(range(batch + 1))
    assert one_each >= 1


@pytest.mark.parametrize("batch,rows,length", [(1, 128, 4096), (1, 128, 16384), (2, 128, 8192), (4, 64, 2048),
                                               (1, 256, 2048), (1, 64, 4096), (1, 128, 1024), (1, 16, 4096)])
def test_kernel_matches_torch_fewer_pieces(batch, rows, length):
    # schedule.py's fewer-pieces rule (small batches, 64+ query rows), equal and uneven lengths, through
    # compute_schedule as get_mla_metadata calls it.
    rng = random.Random(batch * 13 + rows + length)
    for lengths in ([length] * batch, [rng.randint(length // 2, length) for _ in range(batch)]):
        cache_seqlens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
        poison_allocator()
        got = schedule.compute_schedule(cache_seqlens, rows, 1, implementation="kernel")
        num_parts = schedule.num_sm_parts_for(rows, 1, schedule.num_sms_of(cache_seqlens.device))
        assert_same(cache_seqlens, num_parts, got, f"(b {batch}, rows {rows}, lengths {lengths})",
                    rows=rows)


@pytest.mark.parametrize("batch,num_parts,length", [(64, 33, 4096), (64, 33, 8192), (128, 66, 4096), (128, 33, 4096),
                                                    (2049, 132, 100), (3000, 66, 100)])
def test_kernel_matches_torch_snapped(batch, num_parts, length):
    # Whole sequences where b > parts (schedule.py's snapped schedule): one split per sequence, bounds placed
    # across the kernel's chunks for b > 1024.
    cache_seqlens = torch.tensor([length] * batch, dtype=torch.int32, device="cuda")
    poison_allocator()
    got = kernel_schedule(cache_seqlens, num_parts)
    assert_same(cache_seqlens, num_parts, got)
    assert got[1].tolist() == list(range(batch + 1))


@pytest.mark.parametrize("batch,base,step", [(128, 1024, 2), (125, 1024, 5), (99, 700, 0), (1500, 300, 0)])
def test_kernel_matches_torch_snapped_by_count(batch, base, step):
    # The by-count snapped bounds (part p from sequence floor(p b / P); FlashMLA's sweep at base 1K is the first
    # case) through compute_schedule at s_q * h_q = 128, as get_mla_metadata calls it; 1500 sequences: chunks.
    lengths = [base + step * i for i in range(batch)]
    cache_seqlens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    poison_allocator()
    got = schedule.compute_schedule(cache_seqlens, 128, 1, implementation="kernel")
    num_parts = schedule.num_sm_parts_for(128, 1, schedule.num_sms_of(cache_seqlens.device))
    assert_same(cache_seqlens, num_parts, got, f"(b {batch}, lengths {base} + {step} i)", rows=128)
    assert got[1].tolist() == list(range(batch + 1))


def test_strided_cache_seqlens():
    wide = torch.randint(0, 50_000, (300, 3), dtype=torch.int32, device="cuda")
    for column in range(3):
        cache_seqlens = wide[:, column]  # stride 3
        assert_same(cache_seqlens, 66, kernel_schedule(cache_seqlens, 66))
    expanded = torch.tensor([777], dtype=torch.int32, device="cuda").expand(50)  # stride 0
    assert_same(expanded, 132, kernel_schedule(expanded, 132))


def test_get_mla_metadata_takes_the_kernel_on_cuda(monkeypatch):
    cache_seqlens = torch.tensor([5, 0, 70_000, 64], dtype=torch.int32, device="cuda")
    assert schedule.schedule_implementation(cache_seqlens.device) == schedule.KERNEL
    calls = []
    real = _ops.mla_metadata
    monkeypatch.setattr(_ops, "mla_metadata", lambda *args: calls.append(args) or real(*args))
    metadata, num_splits = hf_flashmla.get_mla_metadata(cache_seqlens, 2 * 128, 1)
    assert len(calls) == 1 and calls[0][-2:] == (schedule.split_cost_pages(256), schedule.min_piece_pages_for(256))
    num_parts = schedule.num_sm_parts_for(256, 1, schedule.num_sms_of(cache_seqlens.device))
    assert_same(cache_seqlens, num_parts, (metadata, num_splits), rows=256)
    torch_metadata, torch_splits = schedule.compute_schedule(cache_seqlens, 2 * 128, 1, implementation="torch")
    assert len(calls) == 1
    assert torch.equal(torch_metadata, metadata) and torch.equal(torch_splits, num_splits)


def test_cuda_graph_replay_with_new_lengths():
    static_lengths = torch.zeros(200, dtype=torch.int32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        schedule.compute_schedule(static_lengths, 128, 1, implementation="kernel")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_metadata, static_splits = schedule.compute_schedule(static_lengths, 128, 1, implementation="kernel")
    num_parts = static_metadata.shape[0]
    generator = torch.Generator().manual_seed(3)
    for trial in range(6):
        if trial == 0:
            lengths = torch.zeros(200, dtype=torch.int32)
        else:
            lengths = torch.randint(0, 10 ** trial, (200,), generator=generator, dtype=torch.int32)
        static_lengths.copy_(lengths)
        static_metadata.fill_(-7)
        static_splits.fill_(-7)
        graph.replay()
        torch.cuda.synchronize()
        assert_same(static_lengths, num_parts, (static_metadata, static_splits), f"(replay {trial})",
                    rows=128)


def test_runs_in_order_on_the_current_stream():
    # The lengths are written on a side stream just before the schedule is computed there; a kernel
    # launched on another stream would read them early.
    side = torch.cuda.Stream()
    lengths = torch.zeros(4096, dtype=torch.int32, device="cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # ~tens of ms: the write below lands late
        lengths.fill_(3000)
        metadata, num_splits = kernel_schedule(lengths, 66)
    side.synchronize()
    assert_same(lengths, 66, (metadata, num_splits))


def test_fake_implementation_and_compile():
    cache_seqlens = torch.randint(0, 9000, (37,), dtype=torch.int32, device="cuda")
    torch.library.opcheck(torch.ops.hf_flashmla.mla_metadata.default, (cache_seqlens, 66, PAGE_SIZE,
                                                                       SEQUENCE_OVERHEAD_PAGES, SPLIT_COST, MIN_PAGES),
                          test_utils=("test_schema", "test_faketensor"))
    torch._dynamo.reset()
    compiled = torch.compile(lambda lengths: kernel_schedule(lengths * 2, 66), fullgraph=True)
    assert_same(cache_seqlens * 2, 66, compiled(cache_seqlens))


def test_bad_arguments_raise():
    # The op's own checks: ValueError / TypeError whose message names the argument (through _ops, which turns the
    # op's RuntimeError into the exception its message names; a direct torch.ops call raises that RuntimeError).
    lengths = torch.tensor([5], dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="^num_sm_parts:"):
        _ops.mla_metadata(lengths, 0, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, SPLIT_COST, MIN_PAGES)
    with pytest.raises(TypeError, match="^cache_seqlens: expected dtype int32"):
        _ops.mla_metadata(lengths.long(), 66, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, SPLIT_COST, MIN_PAGES)
    with pytest.raises(ValueError, match="^cache_seqlens: expected shape"):
        _ops.mla_metadata(lengths[:0], 66, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, SPLIT_COST, MIN_PAGES)
    with pytest.raises(ValueError, match="^sequence_overhead_pages:"):
        _ops.mla_metadata(lengths, 66, PAGE_SIZE, 0, SPLIT_COST, MIN_PAGES)
    with pytest.raises(ValueError, match="^min_piece_pages:"):
        _ops.mla_metadata(lengths, 66, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, SPLIT_COST, -1)
    with pytest.raises(RuntimeError, match="^ValueError: num_sm_parts:"):
        torch.ops.hf_flashmla.mla_metadata(lengths, 0, PAGE_SIZE, SEQUENCE_OVERHEAD_PAGES, SPLIT_COST, MIN_PAGES)
