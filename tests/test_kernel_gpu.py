"""The sm90 CUDA kernel (through the public API) against hf_flashmla.mla_decode_reference on the GPU.

Skipped (tests/conftest.py) unless a CUDA device of compute capability 9.0 is present and the extension is
built, i.e. hf_flashmla.backend(cuda).name == 'cuda_sm90'. Run on the GPU machine:
    python3 -m pytest -q -m gpu tests/test_kernel_gpu.py
"""
import itertools

import pytest
import torch

import hf_flashmla
from hf_flashmla import flash_mla_with_kvcache, get_mla_metadata, mla_decode_reference, schedule
from hf_flashmla.testing import make_paged_inputs, scale_pages
from paged_garbage import assert_nan_propagates, fill_past_lengths

pytestmark = pytest.mark.gpu

DV = 512
# Relative Frobenius error of out against the float32 reference. The kernel rounds the softmax
# probabilities to the input dtype before the P.V product (as FlashMLA does) and rounds out once.
OUT_TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
LSE_ATOL, LSE_RTOL = 1e-3, 1e-4

VARLEN_BY_BATCH = {
    1: [65],
    3: [0, 64, 130],
    8: [63, 0, 1, 64, 65, 257, 7, 128],
}
BATCHES, QUERY_LENGTHS, QUERY_HEADS = (1, 3, 8), (1, 2, 4), (16, 32, 64, 128)
DTYPES = (torch.bfloat16, torch.float16)


def poison_allocator():
    """Fill memory the caching allocator will hand out next with NaN, in both of its pools, so that any
    output element or workspace entry the kernel fails to write shows up as NaN (or a wrong value)."""
    small = [torch.full((128 * 1024,), float("nan"), device="cuda") for _ in range(32)]  # 512 KB each
    large = torch.full((64 * 1024 * 1024,), float("nan"), device="cuda")  # 256 MB
    torch.cuda.synchronize()
    del small, large


def run_kernel(inputs, causal, softmax_scale=None):
    batch, s_q, h_q, _ = inputs.q.shape
    h_kv = inputs.k_cache.shape[2]
    metadata, num_splits = get_mla_metadata(inputs.cache_seqlens, s_q * h_q // h_kv, h_kv)
    return flash_mla_with_kvcache(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, DV,
                                  metadata, num_splits, softmax_scale=softmax_scale, causal=causal)


def run_reference(inputs, causal, softmax_scale=None):
    scale = inputs.q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    return mla_decode_reference(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, DV, scale,
                                causal)


def assert_close_to_reference(out, lse, inputs, causal, softmax_scale=None):
    batch, s_q, h_q, _ = inputs.q.shape
    assert out.shape == (batch, s_q, h_q, DV) and out.dtype == inputs.q.dtype and out.is_cuda
    assert lse.shape == (batch, h_q, s_q) and lse.dtype == torch.float32
    ref_out, ref_lse = run_reference(inputs, causal, softmax_scale)
    unseen = torch.isinf(ref_lse)  # queries that see no key: out = 0, lse = +inf
    assert torch.equal(torch.isinf(lse), unseen), "lse: +inf pattern differs from the reference"
    assert torch.all(lse[unseen] == float("inf"))
    assert torch.all(out.permute(0, 2, 1, 3)[unseen] == 0), "out: queries that see no key must be 0"
    assert torch.isfinite(out).all(), "out: non-finite values"
    assert not torch.isnan(lse).any(), "lse: NaN"
    if (~unseen).any():
        lse_error = (lse - ref_lse)[~unseen].abs()
        lse_bound = LSE_ATOL + LSE_RTOL * ref_lse[~unseen].abs()
        assert torch.all(lse_error <= lse_bound), f"lse: max abs error {lse_error.max().item():.3g}"
        error = ((out.float() - ref_out.float()).norm() / ref_out.float().norm()).item()
        assert error < OUT_TOLERANCE[inputs.q.dtype], f"out: relative error {error:.3g}"


def check_case(lengths, s_q, h_q, dtype, causal, seed=0, softmax_scale=None):
    # A first call on other data of the same shapes, and NaN-filled free memory, then the real one.
    stale = make_paged_inputs(lengths, s_q, h_q, dtype=dtype, device="cuda", seed=seed + 7919)
    run_kernel(stale, causal, softmax_scale)
    inputs = make_paged_inputs(lengths, s_q, h_q, dtype=dtype, device="cuda", seed=seed)
    del stale
    poison_allocator()  # after the inputs are allocated, so the kernel's outputs and workspace get NaN memory
    out, lse = run_kernel(inputs, causal, softmax_scale)
    torch.cuda.synchronize()
    assert_close_to_reference(out, lse, inputs, causal, softmax_scale)


def test_backend_is_the_kernel():
    assert hf_flashmla.backend(torch.device("cuda")).name == "cuda_sm90"


MATRIX = list(itertools.product(BATCHES, QUERY_LENGTHS, QUERY_HEADS, DTYPES, (False, True)))


def matrix_id(case):
    batch, s_q, h_q, dtype, causal = case
    return f"b{batch}-sq{s_q}-hq{h_q}-{str(dtype).replace('torch.', '')}-{'causal' if causal else 'full'}"


@pytest.mark.parametrize("case", MATRIX, ids=[matrix_id(c) for c in MATRIX])
def test_matrix(case):
    batch, s_q, h_q, dtype, causal = case
    check_case(VARLEN_BY_BATCH[batch], s_q, h_q, dtype, causal, seed=batch * 100 + s_q * 10 + h_q)


# Any h_q from 1 to 128 (GLM-4.7-Flash's 20, tensor-parallel shards such as 10), not only powers of two: s_q * h_q
# rows fold into 64-row tiles, the last one partial (h_q = 63 at s_q = 2: 126 rows, two tiles; 126 at s_q = 4:
# 504 rows, eight).
ODD_HEADS = (1, 3, 10, 20, 63, 126)


@pytest.mark.parametrize("h_q", ODD_HEADS)
@pytest.mark.parametrize("s_q", [1, 2, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_any_number_of_heads(h_q, s_q, dtype):
    check_case([65, 0, 1000, 7, 4096, 130], s_q, h_q, dtype, causal=True, seed=h_q * 10 + s_q)


@pytest.mark.parametrize("h_q", ODD_HEADS)
def test_any_number_of_heads_long_and_batched(h_q):
    # Split sequences (pieces and combine) and a batch of 128 (whole sequences) at the same odd head counts.
    check_case([20000, 3000], 1, h_q, torch.bfloat16, causal=False, seed=h_q)
    check_case([(i * 53) % 700 + 1 for i in range(128)], 2, h_q, torch.bfloat16, causal=True, seed=h_q + 1)


@pytest.mark.parametrize("length", [0, 1, 2, 63, 64, 65, 127, 128, 129, 1000, 4097])
@pytest.mark.parametrize("s_q", [1, 2, 4])
def test_single_lengths(length, s_q):
    check_case([length], s_q, 128, torch.bfloat16, causal=True, seed=length)


@pytest.mark.parametrize("h_q", [16, 128])
@pytest.mark.parametrize("s_q", [1, 2])
def test_batch_128_varlen(s_q, h_q):
    generator = torch.Generator().manual_seed(s_q * 1000 + h_q)
    lengths = torch.normal(4096.0, 1024.0, size=(128,), generator=generator).round().clamp_min(1).long().tolist()
    lengths[5] = 0
    lengths[17] = 1
    check_case(lengths, s_q, h_q, torch.bfloat16, causal=True, seed=3)


# The seesaw kernel's lazy rescaling (csrc/mla_decode_seesaw.cuh): the running row max moves only when a page's max
# passes it by more than 2^8 after the softmax scale, so random data of one scale (whose max settles on the first
# pages) never takes the update path after the first page. Here key scales grow along each sequence (every few
# pages a jump past the threshold, on A and B pages of a pair, within and across split pieces) or vary at random
# per page (jumps up and down, some just under the threshold: P up to 256).
@pytest.mark.parametrize("pattern", ["ramp", "random"])
@pytest.mark.parametrize("s_q,h_q", [(1, 16), (1, 128), (2, 64), (2, 128)])
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_running_max_jumps(pattern, s_q, h_q, dtype):
    lengths = [4096, 1000, 65, 3000, 130]
    inputs = make_paged_inputs(lengths, s_q, h_q, dtype=dtype, device="cuda", seed=23)
    generator = torch.Generator().manual_seed(29)
    choices = torch.tensor([0.5, 1.0, 1.25, 1.6, 2.0, 3.0])
    if pattern == "ramp":
        inputs = scale_pages(inputs, lambda i, j: 0.5 + 0.1 * j + 0.05 * i)
    else:
        inputs = scale_pages(inputs,
                             lambda i, j: choices[torch.randint(len(choices), (1,), generator=generator)].item())
    poison_allocator()
    out, lse = run_kernel(inputs, causal=True)
    torch.cuda.synchronize()
    assert_close_to_reference(out, lse, inputs, causal=True)


@pytest.mark.parametrize("lengths", [
    [32768, 1, 17000, 32000],
    [32768] * 8,
    [4641, 45118, 1730, 1696],  # the uneven speculative-decoding workload of BENCHMARKS.md
], ids=["mixed32K", "eight32K", "uneven"])
@pytest.mark.parametrize("s_q,h_q", [(1, 16), (1, 128), (2, 64), (4, 16)])
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_long_contexts(lengths, s_q, h_q, dtype):
    check_case(lengths, s_q, h_q, dtype, causal=True, seed=11)


@pytest.mark.parametrize("lengths", [[32768, 1, 17000, 32000], [(i * 37) % 300 for i in range(128)],
                                     [4096] * 64], ids=["mixed32K", "short128", "equal64"])
@pytest.mark.parametrize("s_q,h_q", [(1, 16), (2, 128)])
def test_combine_paths(lengths, s_q, h_q):
    # Split sequences merged by the combine kernel (one warp per row, or a block per row where few rows are split
    # many ways), next to sequences written whole and empty ones.
    check_case(lengths, s_q, h_q, torch.bfloat16, causal=True, seed=13)


@pytest.mark.parametrize("lengths,s_q,h_q", [([4096], 1, 128), ([2048, 1900, 2048, 1500], 1, 64),
                                             ([8192, 5000], 1, 128), ([2048], 2, 128)])
def test_fewer_pieces_schedule(lengths, s_q, h_q):
    # Small batches where schedule.py halves the pieces per sequence: spare parts past k b, splits merged.
    num_parts = schedule.num_sm_parts_for(s_q * h_q, 1, schedule.num_sms_of(torch.device("cuda")))
    _, num_splits = get_mla_metadata(torch.tensor(lengths, dtype=torch.int32, device="cuda"), s_q * h_q, 1)
    assert int(num_splits[-1]) < min(num_parts // len(lengths), -(-max(lengths) // 64)) * len(lengths)
    check_case(lengths, s_q, h_q, torch.bfloat16, causal=True, seed=17)


def test_snapped_by_count_schedule():
    # FlashMLA's sweep at base 1K (b = 128, lengths 1024 + 2i, h_q = 128): whole sequences by count, one or two
    # per part, no split.
    lengths = [1024 + 2 * i for i in range(128)]
    _, num_splits = get_mla_metadata(torch.tensor(lengths, dtype=torch.int32, device="cuda"), 128, 1)
    assert num_splits.tolist() == list(range(129))
    check_case(lengths, 1, 128, torch.bfloat16, causal=True, seed=19)


@pytest.mark.parametrize("lengths,s_q,h_q", [([1024], 1, 128), ([1000], 1, 16), ([65], 2, 64), ([130, 0, 64], 1, 32),
                                             ([3000], 4, 16), ([40000], 1, 16)])
def test_one_wave_combine(lengths, s_q, h_q):
    # Small batches whose combine grid (one block per row) fits one wave: the preloading shared-row combine, with up
    # to 32 splits per row (16 one-page pieces; two pieces where token 0 sees no key of the second: [65] at s_q = 2;
    # an empty sequence) and beyond (40K tokens on 132 parts).
    check_case(lengths, s_q, h_q, torch.bfloat16, causal=True, seed=23)


# Garbage past each sequence's length (the tail of its last page, pages no sequence uses) never reaches the output:
# the last page is loaded shifted with zero rows in front (csrc/mla_decode_common.cuh, page_tail_shift), so the
# result equals the one of the same cache with clean bits there, bit for bit.
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 6e4], ids=["nan", "inf", "-inf", "6e4"])
@pytest.mark.parametrize("lengths,s_q,h_q", [([65, 1, 130, 0, 700], 1, 16), ([63, 127, 4000], 2, 128),
                                             ([1000, 17], 1, 128), ([3000] + [7] * 40, 4, 16), ([200], 1, 20)])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["bf16", "fp16"])
def test_nothing_past_the_length_reaches_the_output(lengths, s_q, h_q, causal, dtype, value):
    clean = make_paged_inputs(lengths, s_q, h_q, dtype=dtype, device="cuda", seed=31)
    dirty = fill_past_lengths(clean, value)
    poison_allocator()
    out, lse = run_kernel(dirty, causal)
    clean_out, clean_lse = run_kernel(clean, causal)
    torch.cuda.synchronize()
    assert torch.equal(out, clean_out) and torch.equal(lse, clean_lse)
    assert_close_to_reference(out, lse, clean, causal)


# NaN in q, or in a key every query of its sequence sees, reaches exactly the rows that see it, whether the
# sequence is written whole or split and merged by the combine (20000 tokens at b = 4: pieces); a query that sees
# no key keeps out = 0, lse = +inf.
@pytest.mark.parametrize("lengths,s_q,h_q", [([200, 0, 70, 1], 2, 16), ([20000, 0, 70, 1], 2, 64),
                                             ([9000, 0, 300, 1], 1, 128)])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_nan_in_q_or_a_visible_key_propagates(lengths, s_q, h_q, causal):
    inputs = make_paged_inputs(lengths, s_q, h_q, dtype=torch.bfloat16, device="cuda", seed=8)
    for nan_query in ((2, s_q - 1, 3), (3, 0, 0)):
        assert_nan_propagates(run_kernel, inputs, causal, nan_query=nan_query, nan_key=(0, 5))


def test_many_short_sequences():
    lengths = [(i * 37) % 300 for i in range(128)]  # includes 0 and lengths below one page
    check_case(lengths, 2, 16, torch.bfloat16, causal=True, seed=5)


def test_softmax_scale():
    check_case([300, 64, 1], 2, 32, torch.bfloat16, causal=True, softmax_scale=0.1, seed=9)


def test_deterministic():
    inputs = make_paged_inputs([5000, 70, 1, 12000], 2, 64, device="cuda", seed=21)
    first = run_kernel(inputs, True)
    second = run_kernel(inputs, True)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_newest_generation_metadata():
    inputs = make_paged_inputs([700, 64, 3000], 1, 128, device="cuda", seed=4)
    sched_meta, _ = get_mla_metadata()
    out, lse = flash_mla_with_kvcache(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, DV,
                                      sched_meta, None, causal=True)
    assert_close_to_reference(out, lse, inputs, True)


@pytest.mark.parametrize("lengths,changes", [
    ([20000, 300, 0, 65, 1000], {0: -1, 2: 5, 3: 1}),      # split sequences, an empty one, a small one
    ([1024] * 127 + [0], {0: 1, 5: -1000, 127: 5}),        # one part per sequence: written whole, and an empty one
], ids=["pieces", "whole"])
def test_newest_generation_changed_lengths_give_nan(lengths, changes):
    """Under inference mode (no version counter) an in-place change of cache_seqlens after the schedule passes the
    host's identity check; the kernel compares each length with the copy taken with the schedule and writes NaN
    for the changed sequences (whatever their schedule: pieces, whole, none), the others unchanged."""
    with torch.inference_mode():
        inputs = make_paged_inputs(lengths, 1, 64, device="cuda", seed=5)
        sched_meta, _ = get_mla_metadata()
        args = (inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, DV, sched_meta, None)
        before_out, before_lse = flash_mla_with_kvcache(*args, causal=True)
        for index, delta in changes.items():
            inputs.cache_seqlens[index] += delta
        out, lse = flash_mla_with_kvcache(*args, causal=True)
        torch.cuda.synchronize()
    changed = sorted(changes)
    kept = [i for i in range(len(lengths)) if i not in changes]
    assert out[changed].isnan().all() and lse[changed].isnan().all()
    assert torch.equal(out[kept], before_out[kept]) and torch.equal(lse[kept], before_lse[kept])


@pytest.mark.parametrize("s_q,h_q", [(1, 128), (2, 16)])
def test_cuda_graph_replay_with_new_data(s_q, h_q):
    """Capture the schedule and the kernel in one CUDA graph, then replay it after writing new cache
    contents, new lengths and a new block table into the same static tensors."""
    capacity_pages = 40
    first = make_paged_inputs([1000, 64, 2500, 1], s_q, h_q, device="cuda", seed=1, spare_blocks=0,
                              spare_columns=0)
    pool_blocks = first.k_cache.shape[0]
    static_q = first.q.clone()
    static_k = torch.randn(max(pool_blocks, 4 * capacity_pages), 64, 1, 576, device="cuda", dtype=first.q.dtype)
    static_table = torch.zeros(4, capacity_pages, dtype=torch.int32, device="cuda")
    static_table[:, :first.block_table.shape[1]] = first.block_table.clamp_min(0)
    static_k[:pool_blocks] = first.k_cache
    static_lengths = first.cache_seqlens.clone()

    def step():
        metadata, num_splits = get_mla_metadata(static_lengths, s_q * h_q, 1)
        return flash_mla_with_kvcache(static_q, static_k, static_table, static_lengths, DV, metadata, num_splits,
                                      causal=True)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_lse = step()

    for trial, lengths in enumerate(([2500, 0, 64, 1], [1, 2559, 640, 1700], [capacity_pages * 64] * 4)):
        generator = torch.Generator().manual_seed(100 + trial)
        pages = torch.randperm(static_k.shape[0], generator=generator)[:4 * capacity_pages]
        static_table.copy_(pages.view(4, capacity_pages).to(torch.int32))
        static_k.copy_(torch.randn(static_k.shape, generator=generator).to(static_k.dtype))
        static_q.copy_(torch.randn(static_q.shape, generator=generator).to(static_q.dtype))
        static_lengths.copy_(torch.tensor(lengths, dtype=torch.int32))
        graph.replay()
        torch.cuda.synchronize()

        class Inputs:  # the reference reads the same static tensors
            q, k_cache, block_table, cache_seqlens = static_q, static_k, static_table, static_lengths
        assert_close_to_reference(static_out, static_lse, Inputs, True)


def test_torch_compile_fullgraph_matches_eager():
    inputs = make_paged_inputs([900, 1, 4000, 65], 2, 64, device="cuda", seed=8)
    metadata, num_splits = get_mla_metadata(inputs.cache_seqlens, 2 * 64, 1)

    def attend(q, k_cache, block_table, cache_seqlens, metadata, num_splits):
        out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, DV, metadata, num_splits,
                                          causal=True)
        return out * 2, lse

    torch._dynamo.reset()
    compiled = torch.compile(attend, fullgraph=True)
    args = (inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, metadata, num_splits)
    got_out, got_lse = compiled(*args)
    eager_out, eager_lse = attend(*args)
    torch.cuda.synchronize()
    assert torch.equal(got_out, eager_out)
    assert torch.equal(got_lse, eager_lse)
    assert_close_to_reference(eager_out / 2, eager_lse, inputs, True)


@pytest.mark.parametrize("fullgraph", [False, True], ids=["graph_breaks_allowed", "fullgraph"])
def test_newest_generation_under_inference_mode_and_torch_compile(fullgraph):
    """FlashMLA's callers: the schedule object under torch.inference_mode() and inside a compiled function (the
    schedule computed in the first compiled call, reused by the second; the device-side length check stays)."""
    with torch.inference_mode():
        inputs = make_paged_inputs([900, 1, 4000, 65], 2, 64, device="cuda", seed=8)

        def attend(q, k_cache, block_table, cache_seqlens, sched_meta):
            out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, DV, sched_meta, None,
                                              causal=True)
            return out * 2, lse

        torch._dynamo.reset()
        compiled = torch.compile(attend, fullgraph=fullgraph)
        args = (inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens)
        sched_meta, _ = get_mla_metadata()
        first = compiled(*args, sched_meta)
        second = compiled(*args, sched_meta)
        eager_meta = get_mla_metadata()[0]
        eager = attend(*args, eager_meta)
        torch.cuda.synchronize()
    assert sched_meta.initialized
    # On a mismatch, say whether the two schedules differ (different splits change the rounding) or the outputs alone.
    same_schedule = (torch.equal(sched_meta.tile_scheduler_metadata, eager_meta.tile_scheduler_metadata)
                     and torch.equal(sched_meta.num_splits, eager_meta.num_splits))
    pairs = (("out", first[0], eager[0]), ("lse", first[1], eager[1]), ("second out", second[0], first[0]))
    for name, got, want in pairs:
        diff = (got.float() - want.float()).nan_to_num(0.0).abs().max().item()
        assert torch.equal(got, want), (f"{name}: compiled differs from eager, max |diff| {diff:.3g}, "
                                        f"same schedule: {same_schedule}")
    assert_close_to_reference(eager[0] / 2, eager[1], inputs, True)


@pytest.mark.parametrize("generation", ["first", "newest"])
def test_fake_implementation_matches_the_op(generation):
    inputs = make_paged_inputs([900, 1, 0, 65], 2, 20, device="cuda", seed=9)
    metadata, num_splits = get_mla_metadata(inputs.cache_seqlens, 2 * 20, 1)
    lengths = inputs.cache_seqlens.clone() if generation == "newest" else None
    args = (inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, metadata, num_splits, 576 ** -0.5,
            True, DV, lengths)
    torch.library.opcheck(torch.ops.hf_flashmla.mla_decode.default, args, test_utils=("test_schema", "test_faketensor"))


def test_unchecked_bad_values_do_not_fault():
    """Without check_values the kernel trusts block ids and lengths; bad ones must still not fault or hang:
    TMA zero-fills pages outside the pool and the producer never reads past a block-table row."""
    inputs = make_paged_inputs([200, 130], 1, 16, dtype=torch.bfloat16, device="cuda", seed=7)
    bad_table = inputs.block_table.clone()
    bad_table[0, 0] = inputs.k_cache.shape[0] + 5
    bad_table[1, 1] = -3
    too_long = torch.full_like(inputs.cache_seqlens, bad_table.shape[1] * 64 + 100)
    metadata, num_splits = get_mla_metadata(too_long, 16, 1)
    out, lse = flash_mla_with_kvcache(inputs.q, inputs.k_cache, bad_table, too_long, DV, metadata, num_splits,
                                      causal=True)
    torch.cuda.synchronize()
    assert out.shape == (2, 1, 16, DV) and torch.isfinite(out).all()


def test_row_strided_block_table_matches_contiguous():
    """A block table that is a column slice of a wider one (rows strided) reads the same pages."""
    inputs = make_paged_inputs([700, 65, 1], 2, 64, dtype=torch.bfloat16, device="cuda", seed=11)
    wide = torch.full((3, inputs.block_table.shape[1] + 7), -1, dtype=torch.int32, device="cuda")
    wide[:, :inputs.block_table.shape[1]] = inputs.block_table
    strided = wide[:, :inputs.block_table.shape[1]]
    assert not strided.is_contiguous()
    metadata, num_splits = get_mla_metadata(inputs.cache_seqlens, 2 * 64, 1)
    out, lse = flash_mla_with_kvcache(inputs.q, inputs.k_cache, strided, inputs.cache_seqlens, DV, metadata,
                                      num_splits, causal=True)
    ref_out, ref_lse = flash_mla_with_kvcache(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens,
                                              DV, metadata, num_splits, causal=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
