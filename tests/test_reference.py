"""The reference path, called through the public API on CPU, against dense float64 attention."""
import itertools

import pytest
import torch

import hf_flashmla
from hf_flashmla import reference
from hf_flashmla.testing import dense_attention, make_paged_inputs
from paged_garbage import assert_nan_propagates, fill_past_lengths

# Relative Frobenius error of out: the inputs are identical for both sides, so what remains is the
# float32 accumulation plus one rounding of out to the input dtype (bf16: 8 mantissa bits).
OUT_TOLERANCE = {torch.bfloat16: 6e-3, torch.float16: 1e-3, torch.float32: 1e-5}
LSE_ABS_TOLERANCE = 1e-4

VARLEN_BY_BATCH = {
    1: [65],
    3: [0, 64, 130],
    8: [63, 0, 1, 64, 65, 257, 7, 128],
}
BATCHES, QUERY_LENGTHS, QUERY_HEADS = (1, 3, 8), (1, 2, 4), (16, 32, 64, 128)
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def run_public_api(inputs, causal, softmax_scale=None):
    batch, s_q, h_q, _ = inputs.q.shape
    h_kv = inputs.k_cache.shape[2]
    metadata, num_splits = hf_flashmla.get_mla_metadata(inputs.cache_seqlens, s_q * h_q // h_kv, h_kv)
    return hf_flashmla.flash_mla_with_kvcache(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens,
                                              512, metadata, num_splits, softmax_scale=softmax_scale,
                                              causal=causal)


def assert_matches_dense(inputs, causal, softmax_scale=None):
    out, lse = run_public_api(inputs, causal, softmax_scale)
    expected_out, expected_lse = dense_attention(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens,
                                                 softmax_scale=softmax_scale, causal=causal)
    batch, s_q, h_q, _ = inputs.q.shape
    assert out.shape == (batch, s_q, h_q, 512) and out.dtype == inputs.q.dtype
    assert lse.shape == (batch, h_q, s_q) and lse.dtype == torch.float32

    unseen = torch.isinf(expected_lse)  # queries that see no key
    assert torch.equal(torch.isinf(lse), unseen)
    assert torch.all(lse[unseen] == float("inf"))
    assert torch.all(out.permute(0, 2, 1, 3)[unseen] == 0)
    if (~unseen).any():
        assert (lse.double() - expected_lse)[~unseen].abs().max() < LSE_ABS_TOLERANCE
        error = (out.double() - expected_out).norm() / expected_out.norm()
        assert error < OUT_TOLERANCE[inputs.q.dtype], f"relative error {error:.3g}"
    return unseen


# The full product of the axes is cheap (a few seconds), so no sampling is needed.
SHAPE_CASES = list(itertools.product(BATCHES, QUERY_LENGTHS, QUERY_HEADS, DTYPES, (False, True)))


def case_id(case):
    batch, s_q, h_q, dtype, causal = case
    return f"b{batch}-sq{s_q}-hq{h_q}-{str(dtype).replace('torch.', '')}-{'causal' if causal else 'full'}"


@pytest.mark.parametrize("batch,s_q,h_q,dtype,causal", SHAPE_CASES, ids=[case_id(c) for c in SHAPE_CASES])
def test_every_shape_matches_dense(batch, s_q, h_q, dtype, causal):
    inputs = make_paged_inputs(VARLEN_BY_BATCH[batch], s_q, h_q, dtype=dtype, seed=batch * 100 + s_q * 10 + h_q)
    assert_matches_dense(inputs, causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_every_dtype_and_mask_on_a_varlen_batch(dtype, causal):
    inputs = make_paged_inputs([65, 1, 0, 200, 64, 63, 2, 129], 4, 64, dtype=dtype, seed=7)
    assert_matches_dense(inputs, causal)


@pytest.mark.parametrize("length", [0, 1, 2, 3, 63, 64, 65, 127, 128, 129, 640])
@pytest.mark.parametrize("causal", [False, True])
def test_single_sequence_lengths(length, causal):
    inputs = make_paged_inputs([length], 4, 16, dtype=torch.float32, seed=length)
    unseen = assert_matches_dense(inputs, causal)
    # Causal with L < s_q: query t sees L - s_q + t + 1 keys, i.e. none for t < s_q - L.
    expected_unseen_queries = 4 if length == 0 else (max(0, 4 - length) if causal else 0)
    assert int(unseen[0, 0].sum()) == expected_unseen_queries


def test_zero_length_gives_zero_output_and_infinite_lse():
    inputs = make_paged_inputs([0, 0, 0], 2, 32, dtype=torch.bfloat16, seed=3)
    for causal in (False, True):
        out, lse = run_public_api(inputs, causal)
        assert torch.all(out == 0) and torch.all(lse == float("inf"))


@pytest.mark.parametrize("h_kv", [2, 4])
def test_grouped_kv_heads(h_kv):
    # Query head h reads kv head h // (h_q // h_kv); only the reference path takes h_kv > 1.
    inputs = make_paged_inputs([100, 0, 65], 2, 16, h_kv=h_kv, dtype=torch.float32, seed=h_kv)
    assert_matches_dense(inputs, causal=True)


def test_custom_softmax_scale():
    inputs = make_paged_inputs([90, 33], 2, 16, dtype=torch.float16, seed=11)
    assert_matches_dense(inputs, causal=False, softmax_scale=0.11)


def test_block_table_order_matters():
    # Same pool, same lengths, pages reassigned: the result must follow the block table.
    inputs = make_paged_inputs([200], 1, 16, dtype=torch.float32, seed=5)
    out, _ = run_public_api(inputs, causal=False)
    inputs.block_table[0, :4] = inputs.block_table[0, :4].flip(0)
    assert_matches_dense(inputs, causal=False)
    shuffled_out, _ = run_public_api(inputs, causal=False)
    assert not torch.allclose(out, shuffled_out)


def test_long_sequences_are_processed_in_chunks(monkeypatch):
    monkeypatch.setattr(reference, "CHUNK_PAGES", 2)
    inputs = make_paged_inputs([1000, 129, 5], 3, 32, dtype=torch.float32, seed=13)
    for causal in (False, True):
        assert_matches_dense(inputs, causal)


# NaN in q, or in a key that every query of its sequence sees, reaches exactly the rows that see it; a query that
# sees no key keeps out = 0, lse = +inf even with a NaN q (whether a query sees a key depends on the lengths only).
# A NaN query whose token sees nothing: (3, 0, 0) with length 1, s_q 2, causal.
@pytest.mark.parametrize("nan_query", [(2, 1, 3), (3, 0, 0)], ids=["sees_keys", "sees_none_when_causal"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_nan_in_q_or_a_visible_key_propagates(causal, nan_query):
    inputs = make_paged_inputs([130, 0, 70, 1], 2, 16, dtype=torch.float32, seed=8)
    assert_nan_propagates(run_public_api, inputs, causal, nan_query=nan_query, nan_key=(0, 5))


# FlashMLA's test data: K is NaN (or anything) past each length, in the last page's tail and in unused pages.
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_nothing_past_the_length_reaches_the_output(value, causal):
    clean = make_paged_inputs([65, 1, 130, 0, 63, 64], 2, 16, dtype=torch.bfloat16, seed=9)
    out, lse = run_public_api(fill_past_lengths(clean, value), causal)
    clean_out, clean_lse = run_public_api(clean, causal)
    assert torch.equal(out, clean_out) and torch.equal(lse, clean_lse)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reference_runs_on_gpu():
    inputs = make_paged_inputs([0, 65, 300], 2, 16, dtype=torch.bfloat16, device="cuda", seed=17)
    out, lse = hf_flashmla.mla_decode_reference(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens,
                                                512, None, True)
    expected_out, expected_lse = dense_attention(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens,
                                                 causal=True)
    assert out.device.type == "cuda"
    assert (out.double().cpu() - expected_out).norm() / expected_out.norm() < OUT_TOLERANCE[torch.bfloat16]
    finite = torch.isfinite(expected_lse)
    assert torch.equal(torch.isfinite(lse.cpu()), finite)
