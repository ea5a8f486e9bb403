"""Prefill in token blocks inside the flash_mla layer (HF_FLASHMLA_PREFILL_TOKENS; prefill_slices.py), CPU fp32.

With a tiny limit every prefill chunk runs in blocks (column slices of a row, or groups of whole rows); the
tokens must be those of the unsliced run and of eager, the logits equal to both within fp32 rounding, and
the cache must hold what the unsliced run stores.
"""
import pytest
import torch

from hf_flashmla import LatentPagedCache
from hf_flashmla.checkpoint import TINY, make_config, random_model
from hf_flashmla.transformers_integration import cache_kwarg, call_counts, prefill_slices, reset_call_counts

CACHE = cache_kwarg()

CONFIGS = {
    "v3": ("deepseek_v3", {}),
    "v2": ("deepseek_v2", {}),
    "v2_no_q_lora": ("deepseek_v2", {"q_lora_rank": None}),
    "v3_tiny_latent": ("deepseek_v3", {"kv_lora_rank": 32, "qk_rope_head_dim": 16}),
}
_models = {}


def tiny_model(name):
    if name not in _models:
        architecture, overrides = CONFIGS[name]
        _models[name] = random_model(make_config(architecture, base=TINY, **overrides), seed=2)
    return _models[name]


def prompts(batch, length, pads, seed=0):
    ids = torch.randint(3, TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


@pytest.fixture
def limit(monkeypatch):
    def set_limit(tokens):
        monkeypatch.setattr(prefill_slices, "PREFILL_TOKENS", tokens)
    return set_limit


def generate(model, implementation, ids, mask, **kwargs):
    model.set_attn_implementation(implementation)
    kwargs.setdefault("max_new_tokens", 8)
    return model.generate(ids, attention_mask=mask, do_sample=False, return_dict_in_generate=True,
                          output_scores=True, **kwargs)


def assert_sliced_matches(model, limit, tokens, ids, mask, **kwargs):
    """Sliced (limit `tokens`) against unsliced (0) and eager: same tokens, same scores."""
    eager = generate(model, "eager", ids, mask, **kwargs)
    limit(0)
    reset_call_counts()
    whole = generate(model, "flash_mla", ids, mask, **kwargs)
    assert call_counts["prefill_blocks"] == 0
    limit(tokens)
    reset_call_counts()
    sliced = generate(model, "flash_mla", ids, mask, **kwargs)
    assert call_counts["prefill_blocks"] > 0
    assert torch.equal(sliced.sequences, whole.sequences)
    assert torch.equal(sliced.sequences, eager.sequences)
    if not kwargs.get("num_beams"):
        scores = {name: torch.stack(out.scores) for name, out in (("eager", eager), ("whole", whole),
                                                                   ("sliced", sliced))}
        assert torch.allclose(scores["sliced"], scores["whole"], rtol=1e-5, atol=1e-5)
        assert torch.allclose(scores["sliced"], scores["eager"], rtol=1e-4, atol=1e-4)
    return sliced, whole


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_single_prompt_in_column_slices(name, limit):
    ids, mask = prompts(1, 40, (0,))  # 40 = 5 slices of 7 + 5
    assert_sliced_matches(tiny_model(name), limit, 7, ids, mask)


@pytest.mark.parametrize("name", ["v3", "v2", "v2_no_q_lora", "v3_tiny_latent"])
def test_left_padded_batch_in_column_slices(name, limit):
    ids, mask = prompts(3, 40, (0, 9, 33))  # slices of 7 columns: row 2's 7 real tokens straddle two
    reset_call_counts()
    assert_sliced_matches(tiny_model(name), limit, 7, ids, mask)
    assert call_counts["prefill_blocks"] == 2 * 3 * 6  # layers x rows x ceil(40 / 7)


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_left_padded_batch_in_groups_of_rows(name, limit):
    ids, mask = prompts(5, 20, (0, 3, 19, 7, 0))
    reset_call_counts()
    assert_sliced_matches(tiny_model(name), limit, 45, ids, mask)  # 2 whole rows per block
    assert call_counts["prefill_blocks"] == 2 * 3


def test_decode_steps_over_the_limit_stay_paged(limit):
    ids, mask = prompts(4, 24, (0, 5, 0, 11))
    reset_call_counts()
    assert_sliced_matches(tiny_model("v3"), limit, 3, ids, mask)  # 4 rows x 1 token > 3: still paged
    assert call_counts["prefill_blocks"] == 2 * 4 * 8
    assert call_counts["paged_reference"] + call_counts["paged_kernel"] == 2 * 7


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_beam_search(name, limit):
    ids, mask = prompts(2, 20, (0, 6))  # 6 beam rows x 20 > 7: slices of one column
    assert_sliced_matches(tiny_model(name), limit, 7, ids, mask, num_beams=3, max_new_tokens=6)


def test_slices_cross_page_boundaries_and_store_what_the_unsliced_run_stores(limit):
    model = tiny_model("v3")
    ids, mask = prompts(2, 150, (0, 40))  # real tokens 0..149 and 0..109: pages end at 64 and 128
    sliced, whole = assert_sliced_matches(model, limit, 50, ids, mask, max_new_tokens=4)  # slices of 50 columns
    sliced_cache, whole_cache = sliced.get(CACHE), whole.get(CACHE)
    assert sliced_cache.sequence_lengths == whole_cache.sequence_lengths == [153, 113]
    for layer in range(model.config.num_hidden_layers):
        assert torch.allclose(sliced_cache.pool(layer), whole_cache.pool(layer), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_repeated_generate_with_user_cache(name, limit):
    """The second prompt's chunk is sliced over stored history (before > 0), across a page boundary."""
    from transformers import DynamicCache

    model = tiny_model(name)
    ids, mask = prompts(2, 30, (0, 11))
    follow = torch.randint(3, TINY["vocab_size"], (2, 45), generator=torch.Generator().manual_seed(3))
    runs = {}
    for run, implementation, tokens in (("eager", "eager", 0), ("whole", "flash_mla", 0),
                                        ("sliced", "flash_mla", 9)):
        limit(tokens)
        cache = DynamicCache(config=model.config) if implementation == "eager" else \
            LatentPagedCache(model.config, max_pages=8)
        first = generate(model, implementation, ids, mask, max_new_tokens=5, **{CACHE: cache})
        ids2 = torch.cat([first.sequences, follow], dim=1)
        mask2 = torch.cat([mask, torch.ones(2, ids2.shape[1] - mask.shape[1], dtype=mask.dtype)], dim=1)
        reset_call_counts()
        second = generate(model, implementation, ids2, mask2, max_new_tokens=5, **{CACHE: cache})
        if run == "sliced":
            assert call_counts["prefill_blocks"] == 2 * 2 * 6  # layers x rows x ceil(46 / 9)
        runs[run] = (second.sequences, torch.stack(second.scores))
    assert torch.equal(runs["sliced"][0], runs["whole"][0])
    assert torch.equal(runs["sliced"][0], runs["eager"][0])
    assert torch.allclose(runs["sliced"][1], runs["whole"][1], rtol=1e-5, atol=1e-5)
    assert torch.allclose(runs["sliced"][1], runs["eager"][1], rtol=1e-4, atol=1e-4)


def _forward_logits(model, implementation, ids, mask, use_cache):
    model.set_attn_implementation(implementation)
    kwargs = {CACHE: LatentPagedCache(model.config)} if use_cache and implementation == "flash_mla" else {}
    with torch.no_grad():
        return model(ids, attention_mask=mask, use_cache=use_cache, **kwargs).logits


@pytest.mark.parametrize("use_cache", [True, False])
def test_right_padded_and_uncached_forward_logits(limit, use_cache):
    """Right padding takes the masked path (with a cache); use_cache=False the uncached one."""
    model = tiny_model("v2")
    ids, mask = prompts(3, 24, (0, 0, 5))
    mask[1, 17:] = 0
    eager = _forward_logits(model, "eager", ids, mask, use_cache)
    limit(0)
    whole = _forward_logits(model, "flash_mla", ids, mask, use_cache)
    limit(10)
    reset_call_counts()
    sliced = _forward_logits(model, "flash_mla", ids, mask, use_cache)
    assert call_counts["prefill_blocks"] == 2 * 3 * 3
    real = mask.bool()
    assert torch.allclose(sliced[real], whole[real], rtol=1e-5, atol=1e-5)
    assert torch.allclose(sliced[real], eager[real], rtol=1e-4, atol=1e-4)


def test_a_failing_sliced_forward_rolls_the_cache_back(limit, monkeypatch):
    model = tiny_model("v3")
    model.set_attn_implementation("flash_mla")
    limit(7)
    cache = LatentPagedCache(model.config)
    ids, mask = prompts(2, 30, (0, 4))
    first = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, **{CACHE: cache})
    lengths = cache.sequence_lengths
    o_proj = model.model.layers[0].self_attn.o_proj
    calls = {"n": 0}
    original = o_proj.forward

    def failing(x):
        calls["n"] += 1
        if calls["n"] == 3:  # layer 0's third block: its latent is written, layer 1's is not
            raise RuntimeError("injected")
        return original(x)

    monkeypatch.setattr(o_proj, "forward", failing)
    follow = torch.cat([first, torch.randint(3, 90, (2, 20), generator=torch.Generator().manual_seed(5))], dim=1)
    follow_mask = torch.cat([mask, torch.ones(2, follow.shape[1] - mask.shape[1], dtype=mask.dtype)], dim=1)
    with pytest.raises(RuntimeError, match="injected"):
        model.generate(follow, attention_mask=follow_mask, max_new_tokens=3, do_sample=False, **{CACHE: cache})
    assert cache.sequence_lengths == lengths
    monkeypatch.setattr(o_proj, "forward", original)
    out = model.generate(follow, attention_mask=follow_mask, max_new_tokens=3, do_sample=False, **{CACHE: cache})
    model.set_attn_implementation("eager")
    fresh = model.generate(follow, attention_mask=follow_mask, max_new_tokens=3, do_sample=False)
    assert torch.equal(out, fresh)


def test_limit_zero_disables_and_bad_values_are_refused(limit):
    model = tiny_model("v3")
    ids, mask = prompts(2, 40, (0, 3))
    limit(0)
    reset_call_counts()
    generate(model, "flash_mla", ids, mask, max_new_tokens=2)
    assert call_counts["prefill_blocks"] == 0 and call_counts["dense"] > 0
    assert prefill_slices._parse_limit("0") == 0 and prefill_slices._parse_limit(" 4096 ") == 4096
    for text in ("-1", "lots", "1.5", ""):
        with pytest.raises(ValueError, match="^HF_FLASHMLA_PREFILL_TOKENS: expected a non-negative integer"):
            prefill_slices._parse_limit(text)
    assert prefill_slices.DEFAULT_PREFILL_TOKENS == 0  # opt-in
