"""FlashMLA's own dense-decoding test conditions, as facts (issue 31), written here: a caller that switches to
hf_flashmla by changing the import gets results within FlashMLA's tolerances.

- Data: q and K are randn / 10 clamped to +-1. The pool holds b * (max length rounded up to 256) / 64 pages; the
  block table is a random permutation of them, and its entries after each sequence's used pages are 2147480000.
  K is NaN in every page no sequence uses and past each length inside the last page.
- Matrix: b in {1, 2, 6, 64} x s_q in {1, 2, 4} x s_k in {20, 140, 4096} x h_q in {1, 3, 9, 63, 64, 126, 128} x
  h_kv in {1, 2, 3, 8} (where h_kv divides h_q) x varlen x causal; varlen lengths are drawn from a normal with
  mean s_k and std s_k / 2, at least s_q. Corner cases: b = 128, s_q = 2, s_k = 4096, varlen, about half of the
  lengths 0.
- Settings: torch.set_default_device(device), torch.set_default_dtype(bf16 or fp16), torch.inference_mode(), the
  newest-API schedule object per call: sched_meta, _ = get_mla_metadata(); flash_mla_with_kvcache(q, k_cache,
  block_table, cache_seqlens, 512, sched_meta, None, causal=...).
- Tolerances against a float32 computation from the same inputs: out abs 8e-4, rel 2.01/128, and cosine
  difference <= 5e-6; lse abs 1e-6, rel 8.01/65536. A query that sees no key gets out = 0, lse = +inf.

GPU (marker gpu: the sm_90 kernel is usable): the whole matrix in bf16 and fp16 on three paths: "auto" (what a
caller gets: the kernel for h_kv = 1, the automatic fallback otherwise), "triton" and "reference" (forced with
HF_FLASHMLA_BACKEND; the reference only at b <= 6, where it is quick). Select with -k, e.g.
    python -m pytest -q -m gpu tests/test_flashmla_conditions.py -k "auto and bf16"
CPU: a small part of the matrix (b <= 2, s_k <= 140, four head shapes) through the reference and Triton's
interpreter (the NaN past the lengths included).
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import hf_flashmla
from hf_flashmla import envs

PAGE = 64
PAST_TABLE = 2147480000  # FlashMLA's test fills the block table past each sequence's pages with this id
HEAD_PAIRS = [(h_q, h_kv) for h_q in (1, 3, 9, 63, 64, 126, 128) for h_kv in (1, 2, 3, 8) if h_q % h_kv == 0]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
OUT_ATOL, OUT_RTOL, MAX_COSINE_DIFF = 8e-4, 2.01 / 128, 5e-6
LSE_ATOL, LSE_RTOL = 1e-6, 8.01 / 65536


def case_id(case):
    dtype, batch, s_q, s_k, h_q, h_kv, varlen, causal, path, corner = case
    return (f"{dtype}-b{batch}-sq{s_q}-sk{s_k}-h{h_q}-kv{h_kv}-{'varlen' if varlen else 'fixed'}"
            f"-{'causal' if causal else 'full'}-{path}" + ("-corner" if corner else ""))


def gpu_cases():
    """Ordered so that consecutive cases share their inputs (one input set is kept, see inputs_for)."""
    cases = []
    shapes = [(b, s_q, s_k, False) for b in (1, 2, 6, 64) for s_q in (1, 2, 4) for s_k in (20, 140, 4096)]
    shapes += [(128, 2, 4096, True)]
    for dtype in DTYPES:
        for (batch, s_q, s_k, corner), (h_q, h_kv) in itertools.product(shapes, HEAD_PAIRS):
            for varlen in ((True,) if corner else (False, True)):
                for causal in (False, True):
                    for path in ("auto", "triton", "reference"):
                        if path == "reference" and batch > 6:
                            continue
                        cases.append((dtype, batch, s_q, s_k, h_q, h_kv, varlen, causal, path, corner))
    return cases


def cpu_cases():
    """The reference on a small part of the matrix; Triton's interpreter (slow) on a few of those."""
    cases = []
    for (batch, s_q, s_k), (h_q, h_kv), varlen, causal in itertools.product(
            ((1, 2, 20), (2, 1, 140), (2, 4, 140)), ((1, 1), (3, 3), (9, 1), (64, 8)), (False, True), (False, True)):
        cases.append(("bf16", batch, s_q, s_k, h_q, h_kv, varlen, causal, "reference", False))
    # Triton's interpreter in fp16 only: it turns float32 into bfloat16 by truncation, not rounding to nearest as the
    # GPU does, and the biased P then misses the cosine tolerance (1.4e-5 where rounding gives 2e-6).
    for (h_q, h_kv), causal in itertools.product(((3, 3), (9, 1)), (False, True)):
        cases.append(("fp16", 2, 4, 140, h_q, h_kv, True, causal, "triton", False))
    cases.append(("fp16", 6, 2, 140, 3, 1, True, True, "reference", True))
    cases.append(("fp16", 6, 2, 140, 3, 1, True, True, "triton", True))
    return cases


def make_lengths(batch, s_q, s_k, varlen, corner, generator):
    if not varlen:
        return [s_k] * batch
    drawn = torch.normal(float(s_k), s_k / 2, size=(batch,), generator=generator, device="cpu")
    lengths = [max(s_q, int(v)) for v in drawn.tolist()]
    if corner:  # about half of the sequences empty
        for i in torch.randperm(batch, generator=generator, device="cpu")[:batch // 2].tolist():
            lengths[i] = 0
    return lengths


def make_inputs(dtype, batch, s_q, s_k, h_q, h_kv, varlen, corner, device):
    """FlashMLA's data (module docstring), drawn on `device` in `dtype` (the largest pools, b = 64 with h_kv = 8,
    hold 3e9 values)."""
    seed = hash((batch, s_q, s_k, h_q, h_kv, varlen, corner)) % (2 ** 31)
    lengths = make_lengths(batch, s_q, s_k, varlen, corner, torch.Generator().manual_seed(seed))
    generator = torch.Generator(device=device).manual_seed(seed)
    padded = -(-max(lengths) // 256) * 256
    pages_per_seq = padded // PAGE
    q = (torch.randn(batch, s_q, h_q, 576, generator=generator, device=device, dtype=dtype) / 10).clamp(-1, 1)
    k_cache = torch.randn(batch * pages_per_seq, PAGE, h_kv, 576, generator=generator, device=device, dtype=dtype)
    k_cache = (k_cache / 10).clamp(-1, 1)
    block_table = torch.randperm(batch * pages_per_seq, generator=generator, device=device)
    block_table = block_table.view(batch, pages_per_seq).int()
    for i, length in enumerate(lengths):
        used = -(-length // PAGE)
        k_cache[block_table[i, used:].long()] = float("nan")  # pages the sequence does not use
        if length % PAGE:
            k_cache[block_table[i, used - 1].long(), length % PAGE:] = float("nan")  # the last page's tail
        block_table[i, used:] = PAST_TABLE
    return q, k_cache, block_table, torch.tensor(lengths, dtype=torch.int32, device=device)


def reference_attention(q, k_cache, block_table, lengths, causal):
    """float32 attention over each sequence's own keys (those within its length only), FlashMLA's semantics:
    query head h reads KV head h // (h_q / h_kv); with causal, query token t sees keys 0 .. L - s_q + t."""
    batch, s_q, h_q, dim = q.shape
    h_kv = k_cache.shape[2]
    group = h_q // h_kv
    scale = dim ** -0.5
    out = torch.zeros(batch, s_q, h_q, 512, dtype=torch.float32, device=q.device)
    lse = torch.full((batch, h_q, s_q), float("inf"), dtype=torch.float32, device=q.device)
    for i, length in enumerate(lengths.tolist()):
        if length == 0:
            continue
        pages = block_table[i, :-(-length // PAGE)].long()
        keys = k_cache[pages].reshape(-1, h_kv, dim)[:length].float()  # [L, h_kv, d]
        queries = q[i].float().view(s_q, h_kv, group, dim)
        scores = torch.einsum("tkgd,lkd->kgtl", queries, keys) * scale
        if causal:
            last = torch.arange(s_q, device=q.device) + (length - s_q)
            hidden = torch.arange(length, device=q.device)[None, :] > last[:, None]  # [s_q, L]
            scores = scores.masked_fill(hidden, float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)  # [h_kv, group, s_q]
        seen = torch.isfinite(row_lse)
        weights = torch.where(seen[..., None], torch.exp(scores - row_lse[..., None]), torch.zeros_like(scores))
        out[i] = torch.einsum("kgtl,lkd->tkgd", weights, keys[..., :512]).reshape(s_q, h_q, 512)
        lse[i] = torch.where(seen, row_lse, torch.full_like(row_lse, float("inf"))).reshape(h_q, s_q)
    return out, lse


def assert_within_flashmla_tolerances(out, lse, ref_out, ref_lse):
    unseen = torch.isinf(ref_lse)  # [b, h_q, s_q]: queries that see no key
    assert torch.equal(lse == float("inf"), unseen), "lse: +inf exactly where a query sees no key"
    assert torch.all(out.permute(0, 2, 1, 3)[unseen] == 0), "out: 0 where a query sees no key"
    torch.testing.assert_close(out.float(), ref_out, atol=OUT_ATOL, rtol=OUT_RTOL)
    x, y = out.double(), ref_out.double()
    denominator = (x * x + y * y).sum()
    cosine_diff = 0.0 if denominator == 0 else float(1 - 2 * (x * y).sum() / denominator)
    assert cosine_diff <= MAX_COSINE_DIFF, f"out: cosine difference {cosine_diff:.3g}"
    torch.testing.assert_close(lse, ref_lse, atol=LSE_ATOL, rtol=LSE_RTOL)


_INPUTS: dict = {}  # the last case's inputs and references: consecutive cases share them


def inputs_for(case, device):
    dtype, batch, s_q, s_k, h_q, h_kv, varlen, causal, _, corner = case
    key = (dtype, batch, s_q, s_k, h_q, h_kv, varlen, corner, device)
    if key not in _INPUTS:
        _INPUTS.clear()
        if torch.device(device).type == "cuda":
            # The device stage runs six of these processes at once, and the largest pools (b 128, h_kv 8) take
            # ~11 GB each: a process holds on to no more than its current case's memory.
            torch.cuda.empty_cache()
        _INPUTS[key] = {"inputs": make_inputs(DTYPES[dtype], batch, s_q, s_k, h_q, h_kv, varlen, corner, device)}
    entry = _INPUTS[key]
    if causal not in entry:
        entry[causal] = reference_attention(*entry["inputs"], causal)
    return entry["inputs"], entry[causal]


@pytest.fixture
def flashmla_settings(request, monkeypatch):
    """FlashMLA's settings around one call: default device and dtype, inference mode, and the path."""
    case, device = request.param
    path = case[8]
    if path == "auto":
        monkeypatch.delenv(envs.BACKEND.name, raising=False)
    else:
        monkeypatch.setenv(envs.BACKEND.name, path)
    previous_device, previous_dtype = torch.get_default_device(), torch.get_default_dtype()
    torch.set_default_device(device)
    torch.set_default_dtype(DTYPES[case[0]])
    try:
        with torch.inference_mode():
            yield case, device
    finally:
        torch.set_default_device(previous_device)
        torch.set_default_dtype(previous_dtype)


def run_case(case, device):
    (q, k_cache, block_table, lengths), (ref_out, ref_lse) = inputs_for(case, device)
    causal = case[7]
    sched_meta, _ = hf_flashmla.get_mla_metadata()
    out, lse = hf_flashmla.flash_mla_with_kvcache(q, k_cache, block_table, lengths, 512, sched_meta, None,
                                                  causal=causal)
    assert out.dtype == q.dtype and out.shape == (*q.shape[:3], 512) and lse.dtype == torch.float32
    assert_within_flashmla_tolerances(out, lse, ref_out, ref_lse)


GPU_CASES = gpu_cases()


@pytest.mark.gpu
@pytest.mark.parametrize("flashmla_settings", [(case, "cuda") for case in GPU_CASES],
                         ids=[case_id(case) for case in GPU_CASES], indirect=True)
def test_flashmla_conditions_gpu(flashmla_settings):
    case, device = flashmla_settings
    run_case(case, device)
    if case[8] == "auto":  # what hf_flashmla.backend says for these inputs
        choice = hf_flashmla.backend(torch.device(device), num_heads_k=case[5])
        assert choice.name == ("cuda_sm90" if case[5] == 1 else "triton"), choice


CPU_CASES = cpu_cases()


@pytest.mark.parametrize("flashmla_settings", [(case, "cpu") for case in CPU_CASES],
                         ids=[case_id(case) for case in CPU_CASES], indirect=True)
def test_flashmla_conditions_cpu(flashmla_settings):
    case, device = flashmla_settings
    if case[8] == "triton":
        pytest.importorskip("triton")
        if torch.cuda.is_available():
            pytest.skip("Triton's interpreter is for machines without CUDA (the GPU test covers Triton)")
    run_case(case, device)


def test_the_data_follows_flashmla():
    q, k_cache, block_table, lengths = make_inputs(torch.bfloat16, 6, 2, 140, 3, 1, True, True, "cpu")
    assert float(q.abs().max()) <= 1 and math.isclose(float(q.float().std()), 0.1, rel_tol=0.1)
    padded = -(-int(lengths.max()) // 256) * 256
    assert k_cache.shape[0] == 6 * padded // PAGE and block_table.shape == (6, padded // PAGE)
    assert int((lengths == 0).sum()) == 3 and bool((lengths[lengths > 0] >= 2).all())
    for i, length in enumerate(lengths.tolist()):
        used = -(-length // PAGE)
        assert bool((block_table[i, used:] == PAST_TABLE).all())
        rows = k_cache[block_table[i, :used].long()].reshape(-1, 576)
        assert not rows[:length].isnan().any() and (used * PAGE == length or rows[length:].isnan().all())
    used_pages = {int(p) for row in block_table.tolist() for p in row if p != PAST_TABLE}
    unused = sorted(set(range(k_cache.shape[0])) - used_pages)
    assert unused and k_cache[unused].isnan().all()
