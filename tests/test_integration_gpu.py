"""flash_mla generate() on the Hopper kernel, bf16, against eager (run on an sm90 device with the built
extension; skipped elsewhere by tests/conftest.py)."""
import pytest
import torch

import hf_flashmla
from hf_flashmla import LatentPagedCache
from hf_flashmla.checkpoint import dense_mlp, make_config, random_model
from hf_flashmla.generation_check import compare, count_kernel_calls, left_padded_prompts
from hf_flashmla.transformers_integration import attn_implementation_for, cache_kwarg
from hf_flashmla.transformers_integration.families import in_this_release

pytestmark = pytest.mark.gpu

DEVICE = torch.device("cuda")


def bf16_model(architecture="deepseek_v3", heads=16, layers=3, **overrides):
    config = make_config(architecture, num_attention_heads=heads, num_key_value_heads=heads, num_hidden_layers=layers,
                         first_k_dense_replace=layers, **overrides)  # dense MLP: no bf16 routing flips
    return random_model(config, dtype=torch.float32).to(torch.bfloat16).to(DEVICE).eval()


@pytest.mark.parametrize("architecture,heads,overrides", [
    ("deepseek_v3", 16, {}),
    ("deepseek_v3", 128, {"rope_interleave": False, "q_lora_rank": None}),
    ("deepseek_v2", 32, {}),
    ("deepseek_v3", 64, {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
                                          "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32.0,
                                          "beta_slow": 1.0}}),
])
def test_bf16_generate_close_to_eager_on_the_kernel(architecture, heads, overrides):
    model = bf16_model(architecture, heads, **overrides)
    result = compare_on_the_kernel(model, f"{architecture} h={heads} {overrides}")
    assert result.match_rate > 0.5


@pytest.mark.parametrize("architecture,heads,overrides", [
    ("minicpm3", 40, dict(kv_lora_rank=256, qk_rope_head_dim=32, hidden_size=320)),  # MiniCPM3-4B's latent, heads
    ("mistral4", 32, dict(kv_lora_rank=256)),
])
def test_other_latents_generate_on_the_triton_kernel(architecture, heads, overrides):
    """A latent other than 512 + 64 decodes on the Triton kernel on Hopper (the sm_90 kernel is DeepSeek's shape)."""
    model = bf16_model(architecture, heads, **overrides)
    text_config = model.config.get_text_config(decoder=True)
    ids, mask = left_padded_prompts(4, 150, text_config.vocab_size, device=DEVICE)
    result = compare(model, ids, mask, max_new_tokens=40)
    print(f"\n{architecture}: greedy match rate {result.match_rate:.3f}, logits rel err {result.logits_rel_error:.2e}, "
          f"{result.paged_calls}")
    assert result.paged_calls["paged_triton"] > 0 and result.paged_calls["paged_reference"] == 0
    assert result.logits_rel_error < 1e-2 and result.match_rate > 0.5


def compare_on_the_kernel(model, label):
    """flash_mla against eager on 4 left-padded rows of 150 + 80 tokens (pages 64, 128 and 192 crossed): every
    decode step on the compiled kernel (eager or replayed in a graph), none on the reference, logits close."""
    text_config = model.config.get_text_config(decoder=True)
    ids, mask = left_padded_prompts(4, 150, text_config.vocab_size, device=DEVICE)
    result = compare(model, ids, mask, max_new_tokens=80)
    print(f"\n{label}: greedy match rate {result.match_rate:.3f}, logits rel err {result.logits_rel_error:.2e} (vs "
          f"fp32: flash {result.flash_logits_rel_error_vs_fp32:.2e}, eager "
          f"{result.baseline_logits_rel_error_vs_fp32:.2e}), kernel calls {result.kernel_calls}, {result.paged_calls}")
    assert result.kernel_calls > 0
    assert result.kernel_calls == result.paged_calls["paged_kernel"]
    assert result.paged_calls["paged_reference"] == 0
    assert result.logits_rel_error < 1e-2
    return result


def test_bf16_beam_search_and_prompt_lookup_run_on_the_kernel():
    model = bf16_model()
    model.set_attn_implementation("flash_mla")
    ids, mask = left_padded_prompts(2, 40, model.config.vocab_size, device=DEVICE)
    with count_kernel_calls() as kernel:
        beams = model.generate(ids, attention_mask=mask, num_beams=3, max_new_tokens=20, do_sample=False)
        single = model.generate(ids[:1], attention_mask=mask[:1], prompt_lookup_num_tokens=4, max_new_tokens=20,
                                do_sample=False)
    assert kernel["calls"] > 0
    assert beams.shape == (2, 60) and single.shape[1] == 60


def test_metadata_once_per_step_and_cache_bytes_bf16():
    model = bf16_model(layers=4)
    model.set_attn_implementation("flash_mla")
    ids, mask = left_padded_prompts(3, 10, model.config.vocab_size, device=DEVICE)
    calls = {"n": 0}
    original = hf_flashmla.interface.get_mla_metadata

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    hf_flashmla.interface.get_mla_metadata = counting
    try:
        cache = LatentPagedCache(model.config)
        model.generate(ids, attention_mask=mask, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                       **{cache_kwarg(): cache})
    finally:
        hf_flashmla.interface.get_mla_metadata = original
    assert calls["n"] == 20  # one per forward pass (the 10-token prefill and 19 decode steps), not per layer
    for layer in range(4):
        assert cache.pool(layer).dtype == torch.bfloat16 and cache.pool(layer).shape[-1] == 576
    assert cache.used_bytes() == sum(cache.sequence_lengths) * 4 * 576 * 2


# Every served family on the kernel (tests/test_integration_families.py checks them token for token on the CPU).
FAMILY_CASES = [
    ("glm4_moe_lite", {}),  # GLM-4.7-Flash's 20 heads and v_head_dim 256 (checkpoint.REAL_HEAD_SHAPES)
    ("glm4_moe_lite", dict(num_attention_heads=10, num_key_value_heads=10)),  # a tensor-parallel shard's 10 heads
    ("longcat_flash", {}),
    ("kimi_linear", {}),
    ("kimi_k25", {}),
    ("bailing_hybrid", {}),
    ("mistral4", {}),
    ("minicpm3", {}),
    ("youtu", {}),
    ("axk1", {}),
    ("sarvam_mla", {}),
]


def bf16_family_model(architecture, layers=3, **overrides):
    """Dense MLPs where the family has a choice (no bf16 routing flips); LongCat-Flash's layers are all MoE."""
    module = "deepseek_v3" if architecture == "kimi_k25" else architecture
    if not in_this_release(module):
        pytest.skip(f"{module} is not in this release")
    config = dense_mlp(make_config(architecture, num_hidden_layers=layers, **overrides))
    return random_model(config, dtype=torch.float32).to(torch.bfloat16).to(DEVICE).eval()


@pytest.mark.parametrize("architecture,overrides", FAMILY_CASES)
def test_bf16_family_generate_close_to_eager_on_the_kernel(architecture, overrides):
    model = bf16_family_model(architecture, **overrides)
    text_config = model.config.get_text_config(decoder=True)
    result = compare_on_the_kernel(
        model, f"{architecture} h={text_config.num_attention_heads} v={text_config.v_head_dim}")
    # Greedy rows may part where eager's own bf16 logits nearly tie (tiny random models tie exactly at times).
    assert all(divergence["near_tie"] for divergence in result.divergences), result.divergences


@pytest.mark.parametrize("architecture", ["glm4_moe_lite", "kimi_linear"])
def test_bf16_family_beam_search_and_prompt_lookup_run_on_the_kernel(architecture):
    model = bf16_family_model(architecture)
    model.set_attn_implementation(attn_implementation_for(model.config, "flash_mla"))
    ids, mask = left_padded_prompts(2, 40, model.config.vocab_size, device=DEVICE)
    with count_kernel_calls() as kernel:
        beams = model.generate(ids, attention_mask=mask, num_beams=3, max_new_tokens=20, do_sample=False)
    assert kernel["calls"] > 0 and beams.shape == (2, 60)
    model.set_attn_implementation("eager")
    try:
        model.generate(ids[:1], attention_mask=mask[:1], prompt_lookup_num_tokens=4, max_new_tokens=2)
    except ValueError as error:  # 5.17 refuses assisted decoding for linear-attention models, eager too
        pytest.skip(f"assisted decoding refused by this release: {error}")
    model.set_attn_implementation("flash_mla")
    with count_kernel_calls() as kernel:
        single = model.generate(ids[:1], attention_mask=mask[:1], prompt_lookup_num_tokens=4, max_new_tokens=20,
                                do_sample=False)
    assert kernel["calls"] > 0 and single.shape[1] == 60
