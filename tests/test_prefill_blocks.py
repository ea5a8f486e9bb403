"""Budgeted prefill (prefill_blocks): a prompt of more tokens than the budget runs through the whole model in
blocks of rows and of columns; tokens and logits equal eager's (CPU, fp32)."""
import pytest
import torch

from hf_flashmla import LatentCacheFullError, LatentPagedCache
from hf_flashmla.transformers_integration import cache_kwarg, call_counts, prefill_blocks, reset_call_counts

from test_integration_generate import generate, prompts, tiny_model

CACHE = cache_kwarg()


def assert_blocks_match_eager(model, ids, mask, prefill_tokens, expected_blocks, **kwargs):
    eager = generate(model, "eager", ids, mask, **kwargs)
    reset_call_counts()
    flash = generate(model, "flash_mla", ids, mask, prefill_tokens=prefill_tokens, **kwargs)
    assert call_counts["prefill_blocks"] == expected_blocks
    assert torch.equal(flash.sequences, eager.sequences)
    if not kwargs.get("num_beams"):
        assert torch.allclose(torch.stack(flash.scores), torch.stack(eager.scores), rtol=1e-4, atol=1e-4)
    return flash


@pytest.mark.parametrize("name", ["v3", "v2_no_q_lora_yarn"])
@pytest.mark.parametrize("prefill_tokens,expected_blocks", [
    (40, 2),   # two rows, then one: whole rows per block
    (25, 3),   # one row per block
    (9, 9),    # rows cut into 9 + 9 + 2 columns
    (7, 9),    # 7 + 7 + 6 columns, the first columns of the padded rows all padding
])
def test_left_padded_batch_in_blocks_matches_eager(name, prefill_tokens, expected_blocks):
    ids, mask = prompts(batch=3, length=20, pads=(0, 7, 13))
    out = assert_blocks_match_eager(tiny_model(name), ids, mask, prefill_tokens, expected_blocks)
    assert out.get(CACHE).sequence_lengths == [20 + 11, 13 + 11, 7 + 11]


def test_no_blocks_when_the_prompt_fits_or_blocking_is_off():
    ids, mask = prompts(batch=3, length=20, pads=(0, 7, 13))
    assert_blocks_match_eager(tiny_model("v3"), ids, mask, 60, 0)
    assert_blocks_match_eager(tiny_model("v3"), ids, mask, 0, 0)


def test_beam_search_in_blocks():
    ids, mask = prompts(batch=2, pads=(0, 6))
    # beams expand the batch before the prefill: 6 rows of 20 tokens, 2 rows per block
    assert_blocks_match_eager(tiny_model("v3"), ids, mask, 45, 3, num_beams=3, max_new_tokens=6)


def test_prompt_lookup_decoding_in_blocks():
    ids, _ = prompts(batch=1, length=30, pads=(0,))
    ids[0, 15:25] = ids[0, 3:13]
    assert_blocks_match_eager(tiny_model("v3"), ids, None, 12, 3, prompt_lookup_num_tokens=4, max_new_tokens=12)


def test_with_transformers_prefill_chunks():
    ids, mask = prompts(batch=3, length=20, pads=(0, 7, 13))
    # chunks of 8, 8 and 4 columns: 3 x 8 tokens go in two blocks of 2 rows and 1 row; 3 x 4 fit in one pass
    assert_blocks_match_eager(tiny_model("v3"), ids, mask, 16, 4, prefill_chunk_size=8)


def test_a_block_that_does_not_fit_undoes_the_blocks_before_it():
    model = tiny_model("v3")
    model.set_attn_implementation("flash_mla")
    cache = LatentPagedCache(model.config, max_pages=2)
    ids, mask = prompts(batch=2, length=70, pads=(0, 0))
    with pytest.raises(LatentCacheFullError, match="max_pages=2"):  # row 0 fits, row 1 does not
        model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, prefill_tokens=70,
                       **{CACHE: cache})
    assert cache.sequence_lengths == [] and cache.num_pages_in_use == 0
    small, small_mask = prompts(batch=1, length=20, pads=(0,))
    out = model.generate(small, attention_mask=small_mask, max_new_tokens=30, do_sample=False, prefill_tokens=8,
                         **{CACHE: cache})
    model.set_attn_implementation("eager")
    assert torch.equal(out, model.generate(small, attention_mask=small_mask, max_new_tokens=30, do_sample=False))


def test_forward_logits_in_blocks_equal_one_pass():
    model = tiny_model("v3")
    model.set_attn_implementation("flash_mla")
    ids, mask = prompts(batch=3, length=20, pads=(0, 7, 13))
    logits = {}
    with torch.no_grad():
        for tokens in (0, 9):
            cache = LatentPagedCache(model.config)
            out = model(input_ids=ids, attention_mask=mask, logits_to_keep=1, prefill_tokens=tokens, **{CACHE: cache})
            logits[tokens] = out.logits
            assert out.get(CACHE) is cache
            assert cache.sequence_lengths == [20, 13, 7] and cache.get_seq_length() == 20
    assert logits[9].shape == logits[0].shape == (3, 1, model.config.vocab_size)
    assert torch.allclose(logits[9], logits[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", [-1, 1, 2.5, "8", True])
def test_bad_prefill_tokens_raise(value):
    model = tiny_model("v3")
    ids, mask = prompts(batch=2, length=20, pads=(0, 3))
    with pytest.raises(ValueError, match="^prefill_tokens: expected 0"):
        generate(model, "flash_mla", ids, mask, prefill_tokens=value, max_new_tokens=2)


def test_budget_formula(monkeypatch):
    model = tiny_model("v3")
    cache = LatentPagedCache(model.config)
    monkeypatch.setattr(prefill_blocks, "_free_bytes", lambda device: 10 << 30)
    plan = prefill_blocks.budget(model, cache, batch=64, length=4096)
    per_token = prefill_blocks.bytes_per_token(model)
    assert plan.bytes_per_token == per_token
    assert plan.pool_bytes == (64 * 64 + 1) * 64 * 576 * 4 * model.config.num_hidden_layers
    assert plan.tokens == (plan.free_bytes - plan.pool_bytes - plan.history_bytes - plan.margin_bytes) // per_token
    assert "prefill block of at most" in str(plan) and "per token" in str(plan)
    assert prefill_blocks.block_shape(64, 4096, 40000) == (9, 4096)
    assert prefill_blocks.block_shape(8, 32768, 20000) == (1, 20000)
    assert prefill_blocks.block_shape(2, 10, 1000) == (2, 10)
