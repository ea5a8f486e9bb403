"""The Triton decode kernel (hf_flashmla/triton_decode.py) against hf_flashmla.mla_decode_reference.

CPU: small shapes through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 where there
is no CUDA). GPU (marker triton_gpu, any CUDA device of compute capability >= 8.0 with Triton): the full
matrix, long contexts, CUDA graphs; the GPU tests force the Triton backend themselves (on Hopper too).
Run on the GPU machine:
    python3 -m pytest -q -rs tests/test_triton_decode.py
Skipped as a whole where Triton is not installed.
"""
import importlib
import itertools

import pytest
import torch

pytest.importorskip("triton")

import hf_flashmla  # noqa: E402
from hf_flashmla import _ops, mla_decode_reference  # noqa: E402
from hf_flashmla import dispatch  # noqa: E402
from hf_flashmla.dispatch import BackendChoice  # noqa: E402
from hf_flashmla.envs import BACKEND  # noqa: E402
from hf_flashmla.testing import make_paged_inputs  # noqa: E402
from paged_garbage import assert_nan_propagates, fill_past_lengths  # noqa: E402

BACKEND_ENV_VAR = BACKEND.name


@pytest.fixture(autouse=True)
def fresh_backend_choices(monkeypatch):
    """Each test starts with no cached backend choice, and what it caches (monkeypatched devices) goes with it."""
    monkeypatch.setattr(dispatch, "_CHOICES", {})
DV = 512
# Relative Frobenius error of out against the float32 reference (P is rounded to the input dtype
# before P V, as in the CUDA kernel); lse is computed in float32 throughout.
OUT_TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}
LSE_ATOL, LSE_RTOL = 1e-3, 1e-4


@pytest.fixture(scope="module")
def interpreted():
    """hf_flashmla.triton_decode running under Triton's CPU interpreter. triton.jit decides at decoration
    time, and Triton's own helpers (tl.max, ...) at Triton's first import: tests/conftest.py sets
    TRITON_INTERPRET=1 on machines without CUDA; elsewhere these tests are skipped (the GPU tests run)."""
    module = importlib.import_module("hf_flashmla.triton_decode")
    if not module.INTERPRETED:
        pytest.skip("Triton runs compiled here (CUDA present, TRITON_INTERPRET unset): the triton_gpu tests cover it")
    # Triton <= 3.6's interpreter turns 1-element arrays into loop bounds with int(), which numpy >= 2.4
    # refuses (fixed in later Triton): a version clash outside this code, so skip rather than fail.
    try:
        q = torch.zeros(1, 1, 16, 576)
        module.mla_decode_triton(q, torch.zeros(1, 64, 1, 576), torch.zeros(1, 1, dtype=torch.int32),
                                 torch.ones(1, dtype=torch.int32), DV, 1.0, False)
    except Exception as error:  # triton.runtime.errors.InterpreterError wraps the TypeError
        if "only 0-dimensional arrays can be converted" in str(error):
            import numpy
            import triton
            pytest.skip(f"Triton {triton.__version__}'s interpreter cannot run with numpy {numpy.__version__}")
        raise
    return module


def reference(inputs, causal, softmax_scale=None):
    scale = inputs.q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    return mla_decode_reference(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, DV, scale, causal)


def assert_matches_reference(out, lse, inputs, causal, softmax_scale=None, expected=None):
    batch, s_q, h_q, _ = inputs.q.shape
    ref_out, ref_lse = expected or reference(inputs, causal, softmax_scale)
    assert out.shape == (batch, s_q, h_q, ref_out.shape[-1]) and out.dtype == inputs.q.dtype
    assert out.device == inputs.q.device and lse.shape == (batch, h_q, s_q) and lse.dtype == torch.float32
    out, lse, ref_out, ref_lse = out.cpu(), lse.cpu(), ref_out.cpu(), ref_lse.cpu()
    unseen = torch.isinf(ref_lse)  # queries that see no key: out = 0, lse = +inf
    assert torch.equal(torch.isinf(lse), unseen), "lse: +inf pattern differs from the reference"
    assert torch.all(lse[unseen] == float("inf"))
    assert torch.all(out.permute(0, 2, 1, 3)[unseen] == 0), "out: queries that see no key must be 0"
    assert torch.isfinite(out).all() and not torch.isnan(lse).any()
    if (~unseen).any():
        lse_error = (lse - ref_lse)[~unseen].abs()
        assert torch.all(lse_error <= LSE_ATOL + LSE_RTOL * ref_lse[~unseen].abs()), \
            f"lse: max abs error {lse_error.max().item():.3g}"
        error = ((out.float() - ref_out.float()).norm() / ref_out.float().norm()).item()
        assert error < OUT_TOLERANCE[inputs.q.dtype], f"out: relative error {error:.3g}"


# ------------------------------------------------------------------------------------ CPU (interpreter)
# (lengths, s_q, h_q, h_kv, dtype, causal, num_splits): every tile shape (16 / 32 / 64 rows, several row
# blocks), empty and partial pages, causal rows that see nothing, more splits than pages, h_kv > 1.
INTERPRETER_CASES = [
    ([70], 1, 16, 1, torch.bfloat16, True, None),
    ([0, 300, 64, 1], 2, 16, 1, torch.bfloat16, True, 3),
    ([0, 300, 64, 1], 2, 16, 1, torch.float16, False, 1),
    ([5, 130], 4, 32, 1, torch.float16, True, None),
    ([1, 65], 4, 8, 1, torch.bfloat16, True, 20),
    ([200], 2, 64, 1, torch.bfloat16, False, 2),
    ([129, 3], 1, 64, 1, torch.float32, True, None),
    ([100, 65], 3, 8, 2, torch.float32, True, 5),
]


@pytest.mark.parametrize("lengths,s_q,h_q,h_kv,dtype,causal,num_splits", INTERPRETER_CASES,
                         ids=[f"L{'-'.join(map(str, c[0]))}_sq{c[1]}_h{c[2]}_kv{c[3]}_{str(c[4])[6:]}"
                              f"_{'causal' if c[5] else 'full'}_splits{c[6]}" for c in INTERPRETER_CASES])
def test_interpreter_matches_reference(interpreted, lengths, s_q, h_q, h_kv, dtype, causal, num_splits):
    inputs = make_paged_inputs(lengths, s_q, h_q, h_kv, dtype=dtype, seed=len(lengths) + s_q)
    scale = 0.07 if h_kv > 1 else None  # a non-default scale once
    out, lse = interpreted.mla_decode_triton(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens,
                                             DV, scale or 576 ** -0.5, causal, num_splits=num_splits)
    assert_matches_reference(out, lse, inputs, causal, scale)


# Latents other than DeepSeek's 512 + 64 (MiniCPM3: 256 + 32, Mistral-4: 256 + 64; and small ones): same kernel,
# D_V and D_PE from the shapes. (d_v, d_pe, lengths, s_q, h_q, dtype, causal, num_splits, fp8)
OTHER_LATENT_CASES = [
    (256, 64, [70, 200], 1, 16, torch.bfloat16, True, None, False),
    (256, 32, [0, 300, 64], 2, 16, torch.float16, True, 3, False),
    (256, 32, [129, 3], 1, 40, torch.float32, False, 2, False),
    (32, 16, [5, 130], 4, 4, torch.bfloat16, True, None, False),
    (256, 64, [0, 150, 64], 2, 16, torch.bfloat16, True, 2, True),
    (128, 32, [70, 1], 1, 32, torch.bfloat16, False, None, True),
]


def check_other_latent(launch, d_v, d_pe, lengths, s_q, h_q, dtype, causal, num_splits, fp8, device="cpu"):
    """launch = mla_decode_triton, interpreted or compiled; checked against the reference on the CPU."""
    from hf_flashmla import fp8_latent

    inputs = make_paged_inputs(lengths, s_q, h_q, dtype=dtype, seed=d_v + d_pe, head_dim=d_v + d_pe, device=device)
    if fp8:
        inputs.k_cache = fp8_latent.quantize(inputs.k_cache, d_v)
    scale = (d_v + d_pe) ** -0.5
    out, lse = launch(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, d_v, scale, causal,
                      num_splits=num_splits, is_fp8_kvcache=fp8)
    expected = mla_decode_reference(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, d_v, scale,
                                    causal, fp8)
    assert_matches_reference(out, lse, inputs, causal, expected=expected)


OTHER_LATENT_IDS = [f"{c[0]}+{c[1]}_L{'-'.join(map(str, c[2]))}_sq{c[3]}_h{c[4]}_{str(c[5])[6:]}"
                    f"{'_fp8' if c[8] else ''}" for c in OTHER_LATENT_CASES]


@pytest.mark.parametrize("d_v,d_pe,lengths,s_q,h_q,dtype,causal,num_splits,fp8", OTHER_LATENT_CASES,
                         ids=OTHER_LATENT_IDS)
def test_interpreter_other_latents_match_reference(interpreted, d_v, d_pe, lengths, s_q, h_q, dtype, causal,
                                                   num_splits, fp8):
    check_other_latent(interpreted.mla_decode_triton, d_v, d_pe, lengths, s_q, h_q, dtype, causal, num_splits, fp8)


# MiniCPM3 (40 heads, 256 + 32) and Mistral-4 shapes at real lengths, compiled, with the split count chosen by the
# kernel's own heuristic (None) as the integration calls it.
GPU_OTHER_LATENT_CASES = [
    (256, 32, [4096 + 17, 31, 1000], 1, 40, torch.bfloat16, True, None, False),
    (256, 64, [16384, 5, 700], 1, 128, torch.bfloat16, True, None, False),
    (256, 64, [3000, 64], 2, 32, torch.float16, True, None, False),
    (256, 64, [5000, 130], 1, 16, torch.bfloat16, True, None, True),
]


@pytest.mark.triton_gpu
@pytest.mark.parametrize("d_v,d_pe,lengths,s_q,h_q,dtype,causal,num_splits,fp8", GPU_OTHER_LATENT_CASES,
                         ids=[f"{c[0]}+{c[1]}_L{'-'.join(map(str, c[2]))}_sq{c[3]}_h{c[4]}_{str(c[5])[6:]}"
                              f"{'_fp8' if c[8] else ''}" for c in GPU_OTHER_LATENT_CASES])
def test_gpu_other_latents_match_reference(d_v, d_pe, lengths, s_q, h_q, dtype, causal, num_splits, fp8):
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("needs a CUDA device of compute capability >= 8.0")
    from hf_flashmla import triton_decode

    check_other_latent(triton_decode.mla_decode_triton, d_v, d_pe, lengths, s_q, h_q, dtype, causal, num_splits, fp8,
                       device="cuda")


@pytest.mark.parametrize("d_v,d_pe,ok", [(512, 64, True), (256, 64, True), (256, 32, True), (16, 16, True),
                                         (384, 64, False), (256, 48, False), (1024, 64, False), (512, 128, False),
                                         (512, 8, False), (8, 16, False)])
def test_supports_latent_takes_powers_of_two_within_the_tile_sizes(d_v, d_pe, ok):
    from hf_flashmla.triton_decode import supports_latent

    assert supports_latent(d_v, d_pe) is ok

def test_interpreter_through_the_public_api(interpreted, monkeypatch):
    """HF_FLASHMLA_BACKEND=triton + TRITON_INTERPRET=1 routes both generations to the Triton kernel."""
    monkeypatch.setenv(BACKEND_ENV_VAR, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = []
    launcher = interpreted.mla_decode_triton
    monkeypatch.setattr(interpreted, "mla_decode_triton", lambda *a, **k: calls.append(1) or launcher(*a, **k))
    assert hf_flashmla.backend("cpu").name == "triton"
    inputs = make_paged_inputs([0, 130, 64], 2, 16, dtype=torch.bfloat16, seed=3)
    metadata, num_splits = hf_flashmla.get_mla_metadata(inputs.cache_seqlens, 2 * 16, 1)
    args = (inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, DV)
    out, lse = hf_flashmla.flash_mla_with_kvcache(*args, metadata, num_splits, causal=True)
    assert_matches_reference(out, lse, inputs, True)
    out2, lse2 = hf_flashmla.flash_mla_with_kvcache(*args, hf_flashmla.get_mla_metadata()[0], None, causal=True)
    assert torch.equal(out, out2) and torch.equal(lse, lse2) and len(calls) == 2


def test_interpreter_clamps_bad_values_instead_of_reading_outside(interpreted):
    """Unchecked bad values (CUDA without check_values): lengths past the block-table row are cut to the
    row, block ids are clamped into the pool. Wrong numbers, but nothing outside the tensors is read."""
    inputs = make_paged_inputs([100, 64], 1, 16, dtype=torch.float16, seed=4, spare_columns=0)
    num_blocks = inputs.k_cache.shape[0]
    bad = make_paged_inputs([100, 64], 1, 16, dtype=torch.float16, seed=4, spare_columns=0)
    bad.cache_seqlens = torch.tensor([100, 10_000], dtype=torch.int32)  # row 1 has one page: 64 keys
    bad.block_table[0, 1] = num_blocks + 5                               # clamps to the last block
    bad.block_table[0, 0] = -7                                           # clamps to block 0
    out, lse = interpreted.mla_decode_triton(bad.q, bad.k_cache, bad.block_table, bad.cache_seqlens, DV,
                                             576 ** -0.5, False)
    # What was read: row 0's ids clamped; row 1 cut to its row (2 pages), its padding id -1 clamped to 0.
    assert inputs.block_table[1, 1] == -1
    inputs.block_table[0, 1], inputs.block_table[0, 0], inputs.block_table[1, 1] = num_blocks - 1, 0, 0
    inputs.cache_seqlens = torch.tensor([100, 128], dtype=torch.int32)
    assert_matches_reference(out, lse, inputs, False)


def test_interpreter_without_pages(interpreted):
    """A batch whose block table has no columns (all lengths 0): out = 0, lse = +inf, nothing read."""
    q = torch.randn(2, 1, 16, 576, dtype=torch.bfloat16)
    k_cache = torch.randn(0, 64, 1, 576, dtype=torch.bfloat16)
    block_table = torch.zeros(2, 0, dtype=torch.int32)
    out, lse = interpreted.mla_decode_triton(q, k_cache, block_table, torch.zeros(2, dtype=torch.int32), DV,
                                             576 ** -0.5, True)
    assert torch.all(out == 0) and torch.all(lse == float("inf"))


def test_interpreter_row_strided_block_table(interpreted):
    inputs = make_paged_inputs([130, 64], 1, 16, dtype=torch.bfloat16, seed=6)
    wide = torch.full((2, inputs.block_table.shape[1] + 5), -1, dtype=torch.int32)
    wide[:, :inputs.block_table.shape[1]] = inputs.block_table
    strided = wide[:, :inputs.block_table.shape[1]]
    assert not strided.is_contiguous()
    out, lse = interpreted.mla_decode_triton(inputs.q, inputs.k_cache, strided, inputs.cache_seqlens, DV,
                                             576 ** -0.5, True, num_splits=2)
    assert_matches_reference(out, lse, inputs, True)


def run_interpreted(num_splits):
    module = importlib.import_module("hf_flashmla.triton_decode")

    def run(inputs, causal):
        return module.mla_decode_triton(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, DV,
                                        576 ** -0.5, causal, num_splits=num_splits)
    return run


# NaN in q or in a key every query of its sequence sees reaches exactly the rows that see it, written directly (one
# split) or through the combine (several); a query that sees no key keeps out = 0, lse = +inf.
@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("nan_query", [(2, 1, 3), (3, 0, 0)], ids=["sees_keys", "sees_none_when_causal"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_interpreter_nan_in_q_or_a_visible_key_propagates(interpreted, causal, nan_query, num_splits):
    inputs = make_paged_inputs([200, 0, 70, 1], 2, 16, dtype=torch.float32, seed=8)
    assert_nan_propagates(run_interpreted(num_splits), inputs, causal, nan_query=nan_query, nan_key=(0, 5))


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_interpreter_nothing_past_the_length_reaches_the_output(interpreted, value, num_splits):
    clean = make_paged_inputs([65, 1, 130, 0, 63], 2, 16, dtype=torch.bfloat16, seed=9)
    run = run_interpreted(num_splits)
    out, lse = run(fill_past_lengths(clean, value), True)
    clean_out, clean_lse = run(clean, True)
    assert torch.equal(out, clean_out) and torch.equal(lse, clean_lse)
    assert_matches_reference(out, lse, clean, True)


# ----------------------------------------------------------------------------------- heuristics, backend
def test_num_splits_fill_the_gpu_from_shapes_only():
    interpreted = importlib.import_module("hf_flashmla.triton_decode")  # no launch: compiled module is fine
    choose = interpreted.choose_num_splits
    assert choose(128, 256, 132, 2) == 2          # b128 L16K h16: 128 programs -> 256 of 264 slots
    assert choose(64, 256, 132, 2) == 4           # b64: 256 of 264 slots
    assert choose(4096, 256, 132, 2) == 1         # enough programs already
    assert choose(1, 256, 132, 2) >= 0.85 * interpreted.MAX_SPLITS  # one long sequence: ~as many as allowed
    assert choose(1, 9, 132, 2) == 2              # ... but >= MIN_PAGES_PER_SPLIT pages each
    assert choose(1, 0, 132, 2) == 1


def test_tile_table():
    interpreted = importlib.import_module("hf_flashmla.triton_decode")  # no launch: compiled module is fine
    for rows, dtype in itertools.product((1, 16, 17, 32, 33, 64, 128, 512),
                                         (torch.bfloat16, torch.float16, torch.float32)):
        config = interpreted.tile_config(rows, dtype)
        assert config.block_m >= 16 and 64 % config.block_n == 0 and config.num_stages >= 2
        if dtype != torch.float32:
            assert config.block_m >= min(rows, 64)  # one program covers every row up to 64
        for fallback in interpreted._fallbacks(config):
            assert 64 % fallback.block_n == 0 and fallback.block_n >= 16


def test_backend_chooses_triton_where_the_sm90_kernel_does_not_apply(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    monkeypatch.setattr(dispatch, "triton_import_error", lambda: None)
    dispatch.forget_choices()
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    dispatch.forget_choices()
    choice = hf_flashmla.backend(cuda)
    assert choice.name == "triton" and "8.9" in choice.reason and "Triton kernel runs instead" in choice.reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    dispatch.forget_choices()
    monkeypatch.setattr(_ops, "extension_available", lambda: False)
    dispatch.forget_choices()
    choice = hf_flashmla.backend(cuda)
    assert choice.name == "triton" and "not built" in choice.reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    dispatch.forget_choices()
    choice = hf_flashmla.backend(cuda)
    assert choice.name == "reference" and ">= 8.0" in choice.reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    dispatch.forget_choices()
    monkeypatch.setattr(dispatch, "triton_import_error", lambda: "ImportError: no triton")
    dispatch.forget_choices()
    choice = hf_flashmla.backend(cuda)
    assert choice.name == "reference" and "no triton" in choice.reason
    assert hf_flashmla.backend("cpu") == BackendChoice("reference", "device cpu is not a CUDA device")


def test_backend_forced_triton(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV_VAR, "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        hf_flashmla.backend("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert hf_flashmla.backend("cpu") == BackendChoice("triton", f"forced by {BACKEND_ENV_VAR}=triton")
    monkeypatch.setattr(dispatch, "triton_import_error", lambda: "ImportError: no triton")
    dispatch.forget_choices()
    with pytest.raises(RuntimeError, match="not importable: ImportError: no triton"):
        hf_flashmla.backend("cpu")
    monkeypatch.setenv(BACKEND_ENV_VAR, "fast")
    with pytest.raises(ValueError, match="'triton'"):
        hf_flashmla.backend("cpu")


# ------------------------------------------------------------------------------------------------- GPU
VARLEN_BY_BATCH = {1: [65], 3: [0, 64, 130], 8: [63, 0, 1, 64, 65, 257, 7, 128]}
BATCHES, QUERY_LENGTHS, QUERY_HEADS = (1, 3, 8), (1, 2, 4), (16, 32, 64, 128)


def run_public_api(inputs, causal, softmax_scale=None):
    batch, s_q, h_q, _ = inputs.q.shape
    h_kv = inputs.k_cache.shape[2]
    metadata, num_splits = hf_flashmla.get_mla_metadata(inputs.cache_seqlens, s_q * h_q // h_kv, h_kv)
    return hf_flashmla.flash_mla_with_kvcache(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, DV,
                                              metadata, num_splits, softmax_scale=softmax_scale, causal=causal)


@pytest.fixture
def force_triton(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV_VAR, "triton")
    assert hf_flashmla.backend(torch.device("cuda")).name == "triton"


@pytest.mark.triton_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("batch,s_q,h_q", list(itertools.product(BATCHES, QUERY_LENGTHS, QUERY_HEADS)))
def test_gpu_matrix(force_triton, batch, s_q, h_q, causal, dtype):
    inputs = make_paged_inputs(VARLEN_BY_BATCH[batch], s_q, h_q, dtype=dtype, device="cuda", seed=batch * 31 + s_q)
    out, lse = run_public_api(inputs, causal)
    torch.cuda.synchronize()
    assert_matches_reference(out, lse, inputs, causal)


@pytest.mark.triton_gpu
@pytest.mark.parametrize("lengths,s_q,h_q,h_kv,dtype", [
    ([4096 + 17, 31, 1000], 1, 16, 1, torch.bfloat16),
    ([32768, 5], 2, 128, 1, torch.bfloat16),
    ([16384] * 4, 1, 32, 1, torch.float16),
    ([300, 700], 2, 32, 4, torch.bfloat16),     # h_kv > 1 (reference-only semantics)
    ([300, 77], 2, 16, 1, torch.float32),       # float32 (ieee dots)
])
def test_gpu_long_and_unusual(force_triton, lengths, s_q, h_q, h_kv, dtype):
    inputs = make_paged_inputs(lengths, s_q, h_q, h_kv, dtype=dtype, device="cuda", seed=len(lengths))
    out, lse = run_public_api(inputs, True, softmax_scale=0.05)
    torch.cuda.synchronize()
    assert_matches_reference(out, lse, inputs, True, 0.05)


@pytest.mark.triton_gpu
@pytest.mark.parametrize("num_splits", [1, 2, 5, 64])
def test_gpu_any_split_count(num_splits):
    from hf_flashmla import triton_decode
    inputs = make_paged_inputs([0, 1, 700, 64 * 9], 2, 64, dtype=torch.bfloat16, device="cuda", seed=num_splits)
    out, lse = triton_decode.mla_decode_triton(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens,
                                               DV, 576 ** -0.5, True, num_splits=num_splits)
    torch.cuda.synchronize()
    assert_matches_reference(out, lse, inputs, True)


@pytest.mark.triton_gpu
@pytest.mark.parametrize("num_splits", [1, 3])
def test_gpu_bad_values_neither_fault_nor_hang(num_splits):
    """Unchecked lengths past the block-table row (or negative) and block ids outside the pool: clamped,
    never read outside the tensors (run under compute-sanitizer to see it)."""
    from hf_flashmla import triton_decode
    inputs = make_paged_inputs([100, 64], 1, 16, dtype=torch.bfloat16, device="cuda", seed=9, spare_columns=0)
    lengths = torch.tensor([1 << 30, -5], dtype=torch.int32, device="cuda")
    inputs.block_table[0, 0] = 1 << 30
    inputs.block_table[0, 1] = -(1 << 30)
    out, lse = triton_decode.mla_decode_triton(inputs.q, inputs.k_cache, inputs.block_table, lengths, DV,
                                               576 ** -0.5, True, num_splits=num_splits)
    torch.cuda.synchronize()
    assert torch.isfinite(out).all() and torch.isfinite(lse[0]).all() and lse[1].eq(float("inf")).all()


@pytest.mark.triton_gpu
def test_gpu_cuda_graph_replay_with_new_cache_contents(force_triton):
    inputs = make_paged_inputs([700, 64, 3000], 1, 16, dtype=torch.bfloat16, device="cuda", seed=11)
    run_public_api(inputs, True)  # compile outside the capture
    metadata, num_splits = hf_flashmla.get_mla_metadata(inputs.cache_seqlens, 16, 1)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = hf_flashmla.flash_mla_with_kvcache(inputs.q, inputs.k_cache, inputs.block_table,
                                                      inputs.cache_seqlens, DV, metadata, num_splits, causal=True)
    for seed in range(2):
        torch.manual_seed(seed)
        inputs.q.normal_()
        inputs.k_cache.normal_()
        graph.replay()
        torch.cuda.synchronize()
        assert_matches_reference(out, lse, inputs, True)
