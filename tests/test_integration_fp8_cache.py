"""generate() with an FP8 latent cache (generate(..., cache_config={"kv_cache_dtype": "fp8_e4m3"})) on tiny random
models (CPU, fp32).

The equivalence: eager attention with a DynamicCache that stores each token's latent as the FP8 cache gives it back
(hf_flashmla.testing.fp8_round_trip_cache) is the exact attention over the FP8 cache's keys, so flash_mla with the
FP8 cache must give its tokens (greedy, padded batches, beam search, sampling with a seed, prompt lookup, prefill in
blocks, CUDA-graph decode steps emulated on the CPU). Plain eager (no quantization) is a different model: its
agreement is what tests/test_fp8_kernel.py and `hf-flashmla evaluate --kv-cache-dtype fp8_e4m3` measure.
"""
import pytest
import torch

from hf_flashmla import HybridLatentCache, LatentPagedCache, fp8_latent
from hf_flashmla.checkpoint import TINY, make_config, random_model
from hf_flashmla.latent_cache import cache_bytes_per_token_per_layer
from hf_flashmla.testing import fp8_round_trip_cache
from hf_flashmla.transformers_integration import cache_kwarg, call_counts, decode_graphs, reset_call_counts

from test_integration_generate import prompts, tiny_model

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # tests/conftest.py

CACHE = cache_kwarg()
FP8 = {"kv_cache_dtype": "fp8_e4m3"}


def run(model, implementation, ids, mask=None, **kwargs):
    model.set_attn_implementation(implementation)
    kwargs.setdefault("max_new_tokens", 10)
    kwargs.setdefault("do_sample", False)
    return model.generate(ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True, **kwargs)


def eager_fp8(model, ids, mask=None, **kwargs):
    """Eager attention over the FP8 cache's keys."""
    return run(model, "eager", ids, mask, **{CACHE: fp8_round_trip_cache(model.config)}, **kwargs)


def flash_fp8(model, ids, mask=None, **kwargs):
    return run(model, "flash_mla", ids, mask, cache_config=FP8, **kwargs)


def assert_same(flash, eager, scores=True):
    assert torch.equal(flash.sequences, eager.sequences)
    if scores:
        assert torch.allclose(torch.stack(flash.scores), torch.stack(eager.scores), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["v3", "v3_no_interleave", "v3_no_q_lora", "v3_yarn", "v2", "v2_no_q_lora_yarn"])
def test_greedy_padded_batch_equals_eager_on_the_fp8_keys(name):
    model = tiny_model(name)
    ids, mask = prompts()
    reset_call_counts()
    flash = flash_fp8(model, ids, mask, max_new_tokens=12)
    assert call_counts["paged_reference"] > 0
    cache = flash.get(CACHE)
    assert isinstance(cache, LatentPagedCache) and cache.is_fp8
    assert all(cache.pool(layer).dtype == torch.uint8 and cache.pool(layer).shape[-1] == 656 for layer in range(2))
    assert_same(flash, eager_fp8(model, ids, mask, max_new_tokens=12))


def test_quantization_changes_what_eager_without_it_computes():
    """The equivalence above is not vacuous: the FP8 keys move the logits (on this random model, by ~1e-2)."""
    model = tiny_model("v3")
    ids, mask = prompts()
    flash = flash_fp8(model, ids, mask)
    plain = run(model, "eager", ids, mask)
    assert not torch.allclose(torch.stack(flash.scores), torch.stack(plain.scores), rtol=1e-4, atol=1e-4)


def test_short_prompt_paged_from_the_first_chunk():
    model = tiny_model("v3")
    ids, mask = prompts(batch=3, length=12, pads=(0, 5, 11))
    reset_call_counts()
    flash = flash_fp8(model, ids, mask)
    assert call_counts["dense"] == 0
    assert_same(flash, eager_fp8(model, ids, mask))


def test_beam_search():
    model = tiny_model("v3")
    ids, mask = prompts(batch=2, pads=(0, 6))
    assert_same(flash_fp8(model, ids, mask, num_beams=3, max_new_tokens=6),
                eager_fp8(model, ids, mask, num_beams=3, max_new_tokens=6), scores=False)


def test_sampling_with_a_seed():
    model = tiny_model("v3")
    ids, mask = prompts()
    torch.manual_seed(11)
    flash = flash_fp8(model, ids, mask, do_sample=True, top_k=20)
    torch.manual_seed(11)
    assert_same(flash, eager_fp8(model, ids, mask, do_sample=True, top_k=20))


def test_prompt_lookup_decoding():
    model = tiny_model("v3")
    ids, _ = prompts(batch=1, length=30, pads=(0,))
    ids[0, 15:25] = ids[0, 3:13]
    assert_same(flash_fp8(model, ids, prompt_lookup_num_tokens=4), eager_fp8(model, ids, prompt_lookup_num_tokens=4),
                scores=False)


def test_prefill_in_blocks_equals_one_pass():
    """Later blocks read the earlier blocks' tokens back from the FP8 pages; the first attends to their round trip:
    the same keys either way."""
    model = tiny_model("v3")
    ids, mask = prompts(batch=3, length=40, pads=(0, 7, 13))
    whole = flash_fp8(model, ids, mask)
    reset_call_counts()
    blocked = flash_fp8(model, ids, mask, prefill_tokens=16)
    assert call_counts["prefill_blocks"] > 1
    assert_same(blocked, whole)
    assert_same(blocked, eager_fp8(model, ids, mask))


def test_decode_graphs_emulated(monkeypatch):
    """CUDA-graph decode steps (emulated on the CPU: the same bucket tensors and fixed-address pools) with the FP8
    pools; then a bf16-cache generate() of the same model, whose arena must not keep the FP8 pools."""
    monkeypatch.setattr(decode_graphs, "EMULATE_ON_CPU", True)
    model = tiny_model("v3")
    try:
        ids, mask = prompts(batch=3, pads=(0, 7, 13))
        runner = model.__dict__.get("_hf_flashmla_decode_runner")
        replays = runner.replays if runner is not None else 0
        flash = flash_fp8(model, ids, mask, max_new_tokens=12)
        runner = model.__dict__["_hf_flashmla_decode_runner"]
        assert runner.replays - replays == 11
        cache = flash.get(CACHE)
        assert cache._arena is not None and cache.is_fp8
        assert all(pool.dtype == torch.uint8 for pool in cache._arena.pools.values())
        assert_same(flash, eager_fp8(model, ids, mask, max_new_tokens=12))
        del flash, cache
        plain = run(model, "flash_mla", ids, mask, max_new_tokens=12)
        assert all(pool.dtype == torch.float32 for pool in plain.get(CACHE)._arena.pools.values())
        assert_same(plain, run(model, "eager", ids, mask, max_new_tokens=12))
    finally:
        decode_graphs.release(model)


def test_generation_config_cache_config_is_the_default():
    model = tiny_model("v3")
    ids, mask = prompts()
    model.generation_config.cache_config = dict(FP8)
    try:
        out = run(model, "flash_mla", ids, mask, max_new_tokens=3)
        assert out.get(CACHE).is_fp8
    finally:
        model.generation_config.cache_config = None


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("cache_config,match", [
    ({"kv_cache_dtype": "int4"}, r"cache_config\['kv_cache_dtype'\]: expected 'auto'"),
    ({"nbits": 8}, r"cache_config: .* takes \['kv_cache_dtype'\]"),
])
def test_bad_cache_config_raises(cache_config, match):
    model = tiny_model("v3")
    ids, mask = prompts()
    with pytest.raises(ValueError, match=match):
        run(model, "flash_mla", ids, mask, max_new_tokens=2, cache_config=cache_config)


def test_cache_config_conflicting_with_the_cache_passed_raises():
    model = tiny_model("v3")
    ids, mask = prompts()
    with pytest.raises(ValueError, match=r"cache_config: asks for kv_cache_dtype='fp8_e4m3'"):
        run(model, "flash_mla", ids, mask, max_new_tokens=2, cache_config=FP8,
            **{CACHE: LatentPagedCache(model.config)})


def test_fp16_model_refused_with_the_argument_named():
    cache = LatentPagedCache(num_hidden_layers=1, latent_dim=576, kv_cache_dtype="fp8_e4m3")
    with pytest.raises(ValueError, match=r"^kv_cache_dtype: an FP8 cache serves bfloat16 models"):
        cache.write(0, torch.zeros(1, 2, 576, dtype=torch.float16))
    assert cache.sequence_lengths == [] and not cache.is_initialized


def test_latent_not_in_groups_of_128_refused():
    config = make_config("deepseek_v3", base=TINY, kv_lora_rank=32, qk_rope_head_dim=16)
    with pytest.raises(ValueError, match=r"^kv_cache_dtype: the FP8 layout quantizes the latent in groups of 128"):
        LatentPagedCache(config, kv_cache_dtype="fp8_e4m3")


@pytest.mark.parametrize("value", ["fp4", 8, torch.float16])
def test_bad_kv_cache_dtype_refused(value):
    with pytest.raises(ValueError, match=r"^kv_cache_dtype: expected 'auto'"):
        LatentPagedCache(num_hidden_layers=1, kv_cache_dtype=value)


# -------------------------------------------------------------------------------------- the cache itself
def fp8_cache_with(lengths, seed=0):
    cache = LatentPagedCache(num_hidden_layers=2, latent_dim=576, kv_cache_dtype="fp8_e4m3", initial_pages=2)
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for row, length in enumerate(lengths):
        mask[row, width - length:] = True
    latents = [torch.randn(len(lengths), width, 576, generator=generator).to(torch.bfloat16) for _ in range(2)]
    with cache.forward_pass():
        for layer in range(2):
            cache.write(layer, latents[layer], mask)
    return cache, latents, mask


def test_pool_bytes_and_accounting():
    cache, latents, mask = fp8_cache_with([70, 5])
    assert cache.pool(0).dtype == torch.uint8 and cache.pool(0).shape[1:] == (64, 1, 656)
    assert cache.used_bytes() == (70 + 5) * 2 * 656
    assert cache.bytes_per_token_per_layer(torch.bfloat16) == 656
    assert cache_bytes_per_token_per_layer(576, torch.bfloat16, "fp8_e4m3") == 656
    assert cache_bytes_per_token_per_layer(576, torch.bfloat16) == 1152
    assert "fp8_e4m3" in repr(cache)


def _rows(cache, layer, row, length):
    """Sequence `row`'s first `length` stored rows, dequantized (bytes compared: exact)."""
    pages = cache._pages[row]
    pool = cache.pool(layer).view(-1, 656)
    slots = torch.tensor([pages[i // 64] * 64 + i % 64 for i in range(length)])
    return pool[slots]


def test_written_bytes_are_the_quantized_latent():
    cache, latents, mask = fp8_cache_with([70, 5])
    for layer in range(2):
        assert torch.equal(_rows(cache, layer, 0, 70), fp8_latent.quantize(latents[layer][0, -70:], 512))
        assert torch.equal(_rows(cache, layer, 1, 5), fp8_latent.quantize(latents[layer][1, -5:], 512))


def test_reorder_select_crop_move_the_bytes():
    cache, latents, mask = fp8_cache_with([70, 5, 130])
    expected = {row: [_rows(cache, layer, row, n) for layer in range(2)] for row, n in enumerate([70, 5, 130])}
    cache.reorder_cache(torch.tensor([2, 2, 0]))  # row 2 taken twice: its pages are copied
    assert cache.sequence_lengths == [130, 130, 70]
    for new_row, (old_row, n) in enumerate([(2, 130), (2, 130), (0, 70)]):
        for layer in range(2):
            assert torch.equal(_rows(cache, layer, new_row, n), expected[old_row][layer])
    cache.batch_select_indices(torch.tensor([2, 0]))
    assert cache.sequence_lengths == [70, 130]
    assert torch.equal(_rows(cache, 1, 1, 130), expected[2][1])
    cache.crop(-10)
    assert cache.sequence_lengths == [60, 120]
    assert torch.equal(_rows(cache, 0, 1, 120), expected[2][0][:120])


def test_reserved_pages_reorder_in_place():
    """A cache reserving its pages (what decode graphs need) copies each row into its own pages."""
    cache = LatentPagedCache(num_hidden_layers=1, latent_dim=576, kv_cache_dtype="fp8_e4m3", reserve_tokens=100)
    latent = torch.randn(2, 20, 576).to(torch.bfloat16)
    with cache.forward_pass():
        cache.write(0, latent)
    table_before = cache._table.clone()
    first = _rows(cache, 0, 0, 20)
    cache.reorder_cache(torch.tensor([0, 0]))
    assert torch.equal(cache._table, table_before)
    assert torch.equal(_rows(cache, 0, 1, 20), first)


def test_failed_forward_rolls_back_an_fp8_step():
    cache, latents, mask = fp8_cache_with([10, 4])
    before = cache.sequence_lengths
    with pytest.raises(RuntimeError, match="boom"):
        with cache.forward_pass():
            cache.write(0, torch.randn(2, 1, 576).to(torch.bfloat16))
            raise RuntimeError("boom")
    assert cache.sequence_lengths == before


def test_hybrid_cache_takes_the_fp8_layout():
    pytest.importorskip("transformers.models.kimi_linear.modeling_kimi_linear")
    config = make_config("kimi_linear", base=TINY)
    cache = HybridLatentCache(config, kv_cache_dtype="fp8_e4m3")
    assert cache.is_fp8 and cache.bytes_per_token_per_layer(torch.bfloat16) == 656
    model = random_model(config, seed=1)
    ids, mask = prompts()
    out = run(model, "flash_mla", ids, mask, max_new_tokens=4, cache_config=FP8)
    used = out.get(CACHE)
    assert isinstance(used, HybridLatentCache) and used.is_fp8
    assert all(used.pool(layer).dtype == torch.uint8 for layer in used.latent_layers)
