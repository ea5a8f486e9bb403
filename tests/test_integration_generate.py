"""attn_implementation="flash_mla" against eager on tiny random DeepSeek-V2/V3 models (CPU, fp32).

The latent keeps the kernel's shape (512 + 64) so the public API (flash_mla_with_kvcache, reference
path on CPU) is what runs; one config uses a tiny latent, which goes to the reference directly.
"""
import pytest
import torch

import hf_flashmla
from hf_flashmla import LatentCacheFullError, LatentPagedCache
from hf_flashmla.latent_cache import pages_for
from hf_flashmla.checkpoint import TINY, make_config, random_model
from hf_flashmla.testing import left_padded_ids
from hf_flashmla.transformers_integration import cache_kwarg, call_counts, reset_call_counts

CACHE = cache_kwarg()

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256, "beta_fast": 32.0,
        "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}

CONFIGS = {
    "v3": ("deepseek_v3", {}),
    "v3_no_interleave": ("deepseek_v3", {"rope_interleave": False}),
    "v3_no_q_lora": ("deepseek_v3", {"q_lora_rank": None}),
    "v3_yarn": ("deepseek_v3", {"rope_scaling": YARN}),
    "v2": ("deepseek_v2", {}),
    "v2_no_q_lora_yarn": ("deepseek_v2", {"q_lora_rank": None, "rope_scaling": YARN}),
    "v3_tiny_latent": ("deepseek_v3", {"kv_lora_rank": 32, "qk_rope_head_dim": 16}),
}

_models = {}


def tiny_model(name):
    if name not in _models:
        architecture, overrides = CONFIGS[name]
        _models[name] = random_model(make_config(architecture, base=TINY, **overrides), seed=1)
    return _models[name]


def prompts(batch=3, length=20, pads=(0, 7, 13), seed=0):
    return left_padded_ids(batch, length, pads[:batch], TINY["vocab_size"], seed)


def generate(model, implementation, ids, mask=None, **kwargs):
    model.set_attn_implementation(implementation)
    kwargs.setdefault("max_new_tokens", 12)
    kwargs.setdefault("do_sample", False)
    out = model.generate(ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True, **kwargs)
    return out


def assert_same_generation(model, ids, mask=None, **kwargs):
    eager = generate(model, "eager", ids, mask, **kwargs)
    reset_call_counts()
    flash = generate(model, "flash_mla", ids, mask, **kwargs)
    assert call_counts["paged_reference"] + call_counts["paged_kernel"] > 0
    assert torch.equal(flash.sequences, eager.sequences)
    if not kwargs.get("num_beams"):
        eager_scores, flash_scores = torch.stack(eager.scores), torch.stack(flash.scores)
        assert torch.allclose(flash_scores, eager_scores, rtol=1e-4, atol=1e-4)
    return flash


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_left_padded_batch_matches_eager(name):
    ids, mask = prompts()
    out = assert_same_generation(tiny_model(name), ids, mask)
    assert isinstance(out.get(CACHE), LatentPagedCache)


@pytest.mark.parametrize("name", ["v3", "v2_no_q_lora_yarn"])
def test_short_left_padded_prompt_runs_paged_from_the_first_chunk(name):
    ids, mask = prompts(batch=3, length=12, pads=(0, 5, 11))  # 12 <= DECODE_MAX_QUERY: no dense prefill
    reset_call_counts()
    assert_same_generation(tiny_model(name), ids, mask)
    assert call_counts["dense"] == 0


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_greedy_single_sequence_and_long_prefill(name):
    model = tiny_model(name)
    ids, _ = prompts(batch=1, length=40, pads=(0,))  # 40 > DECODE_MAX_QUERY: the prefill runs dense
    reset_call_counts()
    assert_same_generation(model, ids)
    assert call_counts["dense"] > 0


@pytest.mark.parametrize("name", ["v3", "v2_no_q_lora_yarn"])
def test_beam_search_matches_eager(name):
    ids, mask = prompts(batch=2, pads=(0, 6))
    assert_same_generation(tiny_model(name), ids, mask, num_beams=3, max_new_tokens=8)


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_prompt_lookup_decoding_matches_eager(name):
    ids, _ = prompts(batch=1, length=30, pads=(0,))
    ids[0, 15:25] = ids[0, 3:13]  # repetition so that candidates get accepted and rejected
    assert_same_generation(tiny_model(name), ids, None, prompt_lookup_num_tokens=4, max_new_tokens=16)


def test_page_boundaries_and_cache_bytes():
    model = tiny_model("v3")
    ids, mask = prompts(batch=2, length=60, pads=(0, 30))
    out = assert_same_generation(model, ids, mask, max_new_tokens=75)  # crosses tokens 64 and 128
    cache = out.get(CACHE)
    assert cache.sequence_lengths == [60 + 74, 30 + 74]  # padding not stored; the last token is not fed back
    dtype_size = torch.empty((), dtype=torch.float32).element_size()
    for layer in range(model.config.num_hidden_layers):
        pool = cache.pool(layer)
        assert pool.shape[1:] == (64, 1, 576)
        assert pool.shape[-1] * pool.element_size() == 576 * dtype_size
    assert cache.used_bytes() == sum(cache.sequence_lengths) * model.config.num_hidden_layers * 576 * dtype_size


@pytest.mark.parametrize("follow_length", [5, 25])  # 25 > DECODE_MAX_QUERY: dense over stored history
def test_repeated_generate_with_user_cache_matches_eager(follow_length):
    from transformers import DynamicCache

    model = tiny_model("v3")
    ids, mask = prompts(batch=2, length=12, pads=(0, 4))
    runs = {}
    for implementation, cache in (("eager", DynamicCache(config=model.config)),
                                  ("flash_mla", LatentPagedCache(model.config, max_pages=16))):
        first = generate(model, implementation, ids, mask, max_new_tokens=6, **{CACHE: cache})
        follow = torch.randint(3, 90, (2, follow_length), generator=torch.Generator().manual_seed(3))
        ids2 = torch.cat([first.sequences, follow], dim=1)
        mask2 = torch.cat([mask, torch.ones(2, ids2.shape[1] - mask.shape[1], dtype=mask.dtype)], dim=1)
        second = generate(model, implementation, ids2, mask2, max_new_tokens=6, **{CACHE: cache})
        runs[implementation] = second.sequences
    assert torch.equal(runs["flash_mla"], runs["eager"])


def test_sampling_matches_eager_under_the_same_seed():
    model = tiny_model("v3")
    ids, mask = prompts()
    outs = {}
    for implementation in ("eager", "flash_mla", "flash_mla"):
        torch.manual_seed(7)
        out = generate(model, implementation, ids, mask, do_sample=True, top_k=20, temperature=1.5).sequences
        assert torch.equal(outs.setdefault(implementation, out), out)  # the same seed, the same tokens
    assert torch.equal(outs["flash_mla"], outs["eager"])
    torch.manual_seed(8)
    assert not torch.equal(generate(model, "flash_mla", ids, mask, do_sample=True, top_k=20,
                                    temperature=1.5).sequences, outs["eager"])  # and the seed matters


@pytest.mark.parametrize("assistance", ["assistant_model", "assistant_early_exit"])
def test_assisted_decoding_matches_eager(assistance):
    """5.25 calls activate_past_recording(recurrent_states_to_keep=...) on every assisted path."""
    model = tiny_model("v3")
    ids, _ = prompts(batch=1, length=24, pads=(0,))
    ids[0, 14:22] = ids[0, 2:10]
    if assistance == "assistant_model":
        assistant = random_model(make_config("deepseek_v3", base=TINY, num_hidden_layers=1), seed=5)
        outs = {}
        for implementation in ("eager", "flash_mla"):
            assistant.set_attn_implementation(implementation)
            outs[implementation] = generate(model, implementation, ids, assistant_model=assistant,
                                            max_new_tokens=12).sequences
        assert torch.equal(outs["flash_mla"], outs["eager"])
    else:  # the model drafts with its first layer: its own cache is built for that one layer
        assert_same_generation(model, ids, None, assistant_early_exit=1, max_new_tokens=12)


def test_deferred_stop_check_rolls_the_returned_cache_back(monkeypatch):
    """DeferredStopCheck (mps only in transformers) runs one step ahead and crops it from the returned cache."""
    from transformers.generation import utils as generation_utils

    class HostEvent:  # the CPU has no device events; the check only records and waits on them
        def __init__(self, *args, **kwargs):
            pass

        def record(self, *args):
            pass

        def synchronize(self):
            pass

    created = []
    original_init = generation_utils.DeferredStopCheck.__init__

    def init(self, *args, **kwargs):
        created.append(self)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(torch, "Event", HostEvent)
    monkeypatch.setattr(generation_utils.DeferredStopCheck, "is_supported", staticmethod(lambda *args, **kwargs: True))
    monkeypatch.setattr(generation_utils.DeferredStopCheck, "__init__", init)
    model = tiny_model("v3")
    ids, mask = prompts(batch=1, pads=(0,))
    eos = generate(model, "eager", ids, mask).sequences[0, ids.shape[1] + 4].item()
    outs = {}
    for implementation in ("eager", "flash_mla"):  # stops at eos: the step run past it is undone
        created.clear()
        outs[implementation] = generate(model, implementation, ids, mask, eos_token_id=eos, pad_token_id=0)
        assert len(created) == 1 and created[0].cache is not None
    length = outs["eager"].sequences.shape[1]
    assert length == ids.shape[1] + 5 and torch.equal(outs["flash_mla"].sequences, outs["eager"].sequences)
    eager_cache, flash_cache = outs["eager"].get(CACHE), outs["flash_mla"].get(CACHE)
    assert isinstance(flash_cache, LatentPagedCache)
    assert flash_cache.get_seq_length() == eager_cache.get_seq_length() == length - 1


def test_forward_without_cache_matches_eager_logits():
    model = tiny_model("v3_no_q_lora")
    ids, mask = prompts()
    logits = {}
    for implementation in ("eager", "flash_mla"):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            logits[implementation] = model(ids, attention_mask=mask, use_cache=False).logits
    real = mask.bool()
    assert torch.allclose(logits["flash_mla"][real], logits["eager"][real], rtol=1e-4, atol=1e-4)


def test_dynamic_cache_passed_by_user_is_served_dense(recwarn):
    from transformers import DynamicCache

    model = tiny_model("v3")
    ids, mask = prompts(batch=2, pads=(0, 5))
    eager = generate(model, "eager", ids, mask)
    reset_call_counts()
    flash = generate(model, "flash_mla", ids, mask, **{CACHE: DynamicCache(config=model.config)})
    assert torch.equal(flash.sequences, eager.sequences)
    assert call_counts["dense_other_cache"] > 0


def test_pool_exhaustion_raises_and_cache_stays_usable():
    model = tiny_model("v3")
    model.set_attn_implementation("flash_mla")
    cache = LatentPagedCache(model.config, max_pages=2)
    ids, mask = prompts(batch=2, length=70, pads=(0, 0))
    with pytest.raises(LatentCacheFullError, match="max_pages=2"):
        model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, **{CACHE: cache})
    assert cache.get_seq_length() == 0
    small, small_mask = prompts(batch=1, length=20, pads=(0,))
    out = model.generate(small, attention_mask=small_mask, max_new_tokens=30, do_sample=False, **{CACHE: cache})
    model.set_attn_implementation("eager")
    assert torch.equal(out, model.generate(small, attention_mask=small_mask, max_new_tokens=30, do_sample=False))
    # A decode step that needs a third page fails cleanly too.
    model.set_attn_implementation("flash_mla")
    with pytest.raises(LatentCacheFullError):
        model.generate(out, max_new_tokens=100, do_sample=False, **{CACHE: cache})


def test_a_prompt_whose_mask_is_all_zeros_is_refused():
    # Its first generated token would attend to itself alone under flash_mla, to its padding under eager.
    ids, mask = prompts()
    mask[1] = 0
    with pytest.raises(ValueError, match="^attention_mask: row 1 had no real token"):
        generate(tiny_model("v3"), "flash_mla", ids, mask)


def test_a_decode_mask_of_the_wrong_width_is_refused_and_the_cache_kept():
    model = tiny_model("v3")
    model.set_attn_implementation("flash_mla")
    ids, mask = prompts()
    cache = LatentPagedCache(model.config)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, **{CACHE: cache})
        token = out.logits[:, -1:].argmax(-1)
        lengths = cache.sequence_lengths
        for width in (ids.shape[1] - 2, ids.shape[1], ids.shape[1] + 2):  # a decode step's mask is 21 wide here
            with pytest.raises(ValueError, match=f"^attention_mask: expected {ids.shape[1] + 1} columns"):
                model(token, attention_mask=torch.ones(3, width, dtype=mask.dtype), **{CACHE: cache})
        assert cache.sequence_lengths == lengths
        model(token, attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1), **{CACHE: cache})
    assert cache.sequence_lengths == [n + 1 for n in lengths]


def test_a_prompt_mask_wider_than_the_prompt_is_refused():
    # Eager reads such a mask's first columns; which ones were meant is not knowable.
    ids, mask = prompts()
    wide = torch.cat([torch.ones(3, 2, dtype=mask.dtype), mask], 1)
    with pytest.raises(ValueError, match=f"^attention_mask: expected {ids.shape[1]} columns"):
        generate(tiny_model("v3"), "flash_mla", ids, wide)
    with torch.no_grad(), pytest.raises(ValueError, match=f"^attention_mask: expected {ids.shape[1]} columns"):
        tiny_model("v3")(ids, attention_mask=wide, use_cache=False)  # no cache: the prompt alone


def test_pool_grows_when_unsized():
    model = tiny_model("v3")
    model.set_attn_implementation("flash_mla")
    cache = LatentPagedCache(model.config, initial_pages=1)
    ids, mask = prompts(batch=3, length=70)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, **{CACHE: cache})
    assert cache.pool_pages >= 1 + sum(-(-n // 64) for n in cache.sequence_lengths)
    model.set_attn_implementation("eager")
    assert torch.equal(out, model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False))


@pytest.mark.parametrize("kwargs, name", [
    (dict(max_pages=0), "max_pages"), (dict(max_pages="3"), "max_pages"), (dict(max_pages=True), "max_pages"),
    (dict(initial_pages=0), "initial_pages"), (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(num_hidden_layers=2.5), "num_hidden_layers"), (dict(latent_dim=-1), "latent_dim"),
])
def test_cache_constructor_rejects_bad_sizes(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}: expected a positive int"):
        LatentPagedCache(**{"num_hidden_layers": 1, "latent_dim": 8, **kwargs})
    with pytest.raises(ValueError, match=f"^{name}: expected a positive int"):
        LatentPagedCache(make_config(base=TINY), **kwargs)


@pytest.mark.parametrize("name", ["max_pages", "initial_pages"])
def test_cache_constructor_rejects_more_pages_than_int32_block_ids(name):
    with pytest.raises(ValueError, match=f"^{name}: expected at most {2 ** 31 - 2} pages"):
        LatentPagedCache(num_hidden_layers=1, latent_dim=8, **{name: 10 ** 18})
    # The largest is held as a range of free ids, not a list of two billion (pools are allocated as written).
    cache = LatentPagedCache(num_hidden_layers=1, latent_dim=8, **{name: 2 ** 31 - 2})
    assert len(cache._free) == 2 ** 31 - 2 and cache._free.pop() == 1


def test_cache_constructor_rejects_config_without_latent():
    with pytest.raises(ValueError, match="^config: .*kv_lora_rank"):
        LatentPagedCache(object())


def test_cache_crop_and_reorder_unit():
    cache = LatentPagedCache(num_hidden_layers=1, latent_dim=8, initial_pages=1)
    latent = torch.arange(2 * 70 * 8, dtype=torch.float32).view(2, 70, 8)
    mask = torch.ones(2, 70, dtype=torch.bool)
    mask[1, :10] = False
    cache.write(0, latent, mask)
    assert cache.sequence_lengths == [70, 60]
    cache.crop(-5)
    assert cache.sequence_lengths == [65, 55] and cache.get_seq_length() == 65
    cache.reorder_cache(torch.tensor([1, 1]))
    assert cache.sequence_lengths == [55, 55]
    _, step, state = cache.write(0, torch.zeros(2, 1, 8), None)
    stored = cache.gather(0, state, 56)
    assert torch.equal(stored[0, :55], latent[1, 10:65]) and torch.equal(stored[1, :55], latent[1, 10:65])
    with pytest.raises(ValueError, match="beam_idx"):
        cache.reorder_cache(torch.tensor([0, 2]))


def test_non_mla_model_raises():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(config)
    with pytest.raises(ValueError, match="LlamaForCausalLM is not one"):
        model.set_attn_implementation("flash_mla")
    with pytest.raises(ValueError, match="multi-head latent attention"):
        LlamaForCausalLM._from_config(config, attn_implementation="flash_mla")
    # Should a model get the name anyway (config edited by hand), its attention still refuses to run.
    model.config._attn_implementation_internal = "flash_mla"
    with pytest.raises(ValueError, match="multi-head latent attention"):
        model(torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="kv_lora_rank"):
        LatentPagedCache(config)


def test_kernel_choice_sends_a_non_576_latent_to_triton_or_refuses(monkeypatch):
    """Where the sm_90 kernel is the backend (stood in for here), a 32 + 16 latent decodes on the Triton kernel
    (its interpreter on the CPU); without Triton it is refused, naming the shapes the kernels take."""
    from hf_flashmla.dispatch import KERNEL, BackendChoice
    from hf_flashmla.transformers_integration import attention

    monkeypatch.setattr(attention, "backend", lambda *_, **__: BackendChoice(KERNEL, "pretend sm90 for the test"))
    model = tiny_model("v3_tiny_latent")
    ids, mask = prompts(batch=1, length=5, pads=(0,))
    model.set_attn_implementation("flash_mla")
    triton_decode = pytest.importorskip("hf_flashmla.triton_decode", reason="Triton is not installed")
    if triton_decode.INTERPRETED:
        reset_call_counts()
        flash = model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False)
        assert call_counts["paged_triton"] > 0 and call_counts["paged_reference"] == 0
        model.set_attn_implementation("eager")
        assert torch.equal(flash, model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False))
        model.set_attn_implementation("flash_mla")
    monkeypatch.setattr(attention, "triton_import_error", lambda: "ModuleNotFoundError: triton")
    with pytest.raises(ValueError, match="kv_lora_rank=512 and qk_rope_head_dim=64.*kv_lora_rank=32"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False)


def test_unservable_modes_raise():
    model = tiny_model("v3")
    model.set_attn_implementation("flash_mla")
    ids, mask = prompts(batch=1, pads=(0,))
    with pytest.raises(ValueError, match="cache_implementation"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2, cache_implementation="static")
    with pytest.raises(NotImplementedError, match="continuous batching"):
        model.generate_batch(inputs=[[1, 2, 3]])
    with pytest.raises(ValueError, match="output_attentions"):
        model(ids, output_attentions=True)
    with pytest.raises(NotImplementedError, match="flash_mla"):
        LatentPagedCache(model.config).update(torch.zeros(1, 1, 1, 512), torch.zeros(1, 1, 1, 64), 0)


def test_from_pretrained_with_flash_mla(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_model("v3")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="flash_mla", dtype=torch.float32)
    assert loaded.config._attn_implementation == "flash_mla"
    ids, mask = prompts()
    reset_call_counts()
    out = loaded.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert call_counts["paged_reference"] > 0
    model.set_attn_implementation("eager")
    assert torch.equal(out, model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False))


class _BlockFP8Linear(torch.nn.Module):
    """kv_b_proj as FP8 checkpoints hold it: float8 weight, one scale per 128 x 128 block."""
    block_size = (128, 128)

    def __init__(self, weight, scale):
        super().__init__()
        blocks = scale.repeat_interleave(128, 0)[:weight.shape[0]].repeat_interleave(128, 1)[:, :weight.shape[1]]
        self.weight = torch.nn.Parameter((weight / blocks).to(torch.float8_e4m3fn), requires_grad=False)
        self.weight_scale_inv = torch.nn.Parameter(scale, requires_grad=False)

    def forward(self, x):
        from hf_flashmla.transformers_integration.absorbed import dense_weight
        return torch.nn.functional.linear(x, dense_weight(self, x.dtype))


def test_fp8_kv_b_proj_is_dequantized_once(monkeypatch):
    from hf_flashmla.transformers_integration import absorbed

    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("no float8 dtype in this torch")
    weight = torch.randn(256, 192)
    scale = torch.rand(2, 2) + 0.5
    dense = absorbed.dense_weight(_BlockFP8Linear(weight, scale), torch.float32)
    assert torch.allclose(dense, weight, rtol=0.07, atol=0.02)

    # In a model: the absorbed W_UK/W_UV are derived once per layer, not at every decode step.
    model = random_model(make_config("deepseek_v3", base=TINY), seed=3)
    for layer in model.model.layers:
        kv_b_proj = layer.self_attn.kv_b_proj
        generator = torch.Generator().manual_seed(len(kv_b_proj.weight))
        blocks = torch.rand(-(-kv_b_proj.out_features // 128), -(-kv_b_proj.in_features // 128),
                            generator=generator) + 0.5
        layer.self_attn.kv_b_proj = _BlockFP8Linear(kv_b_proj.weight.detach(), blocks)
    from_absorbed = []
    original = absorbed.dense_weight

    def counting(linear, dtype):
        from_absorbed.append(linear)
        return original(linear, dtype)

    ids, mask = prompts(batch=2, length=10, pads=(0, 3))  # 10 tokens: paged from the first step
    eager = generate(model, "eager", ids, mask, max_new_tokens=8).sequences
    monkeypatch.setattr(absorbed, "dense_weight", counting)
    reset_call_counts()
    flash = generate(model, "flash_mla", ids, mask, max_new_tokens=8).sequences
    assert call_counts["paged_reference"] == 8 * model.config.num_hidden_layers
    assert torch.equal(flash, eager)
    assert len(from_absorbed) == model.config.num_hidden_layers
    assert {id(linear) for linear in from_absorbed} == {id(layer.self_attn.kv_b_proj) for layer in model.model.layers}


def test_import_registers_everything():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert "flash_mla" in AttentionInterface._global_mapping
    assert "flash_mla" in AttentionMaskInterface._global_mapping
    assert hf_flashmla.transformers_integration.register() is True


def _installed_from_this_tree():
    """The hf_flashmla distribution when it is an install of this source tree, else None."""
    import importlib.metadata
    import json
    import os
    import pathlib

    try:
        distribution = importlib.metadata.distribution("hf_flashmla")
    except importlib.metadata.PackageNotFoundError:
        return None
    direct_url = json.loads(distribution.read_text("direct_url.json") or "{}").get("url")
    here = pathlib.Path(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).as_uri()
    return distribution if direct_url == here else None


def test_supported_range_is_checked_at_registration():
    import warnings

    import transformers
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    from hf_flashmla import transformers_range
    from hf_flashmla.transformers_integration.registration import _version_supported

    requirement = SpecifierSet(transformers_range.REQUIREMENT.removeprefix("transformers"))
    assert Version(transformers.__version__) in requirement  # the suite runs inside the range it declares
    assert transformers_range.OLDEST in requirement and transformers_range.NEWEST_TESTED in requirement
    assert "5.25.1" in requirement and "5.26.0" not in requirement and "5.16.2" not in requirement
    installed = _installed_from_this_tree()
    if installed is not None:  # pip install -e . of this tree (CI): its metadata carries the declared range
        from packaging.requirements import Requirement
        declared = [Requirement(line).specifier for line in installed.requires or [] if line.startswith("transformers")]
        assert declared == [requirement]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _version_supported("5.17.0") and _version_supported("5.25.1")
    with pytest.warns(UserWarning, match="needs transformers >= 5.17.0"):
        assert not _version_supported("5.16.2")
    for newer in ("5.26.0", "5.26.0.dev0", "6.0.0"):
        with pytest.warns(UserWarning, match="newer than the newest release tested"):
            assert _version_supported(newer)


def test_metadata_once_per_forward_pass_not_per_layer(monkeypatch):
    from hf_flashmla import interface

    calls = {"n": 0}
    original = interface.get_mla_metadata

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(interface, "get_mla_metadata", counting)
    model = tiny_model("v3")  # 2 layers
    model.set_attn_implementation("flash_mla")
    ids, mask = prompts(batch=2, length=10, pads=(0, 3))
    model.generate(ids, attention_mask=mask, max_new_tokens=9, min_new_tokens=9, do_sample=False)
    assert calls["n"] == 9  # the 10-token prefill (paged: <= 16 tokens) and 8 decode steps


def test_right_padded_prefill_logits_match_eager():
    model = tiny_model("v2")
    ids, _ = prompts(batch=2, length=24, pads=(0, 0))
    mask = torch.ones_like(ids)
    mask[1, 17:] = 0  # right padding: takes the masked path
    logits = {}
    for implementation in ("eager", "flash_mla"):
        model.set_attn_implementation(implementation)
        cache = LatentPagedCache(model.config) if implementation == "flash_mla" else None
        with torch.no_grad():
            logits[implementation] = model(ids, attention_mask=mask, use_cache=True, **{CACHE: cache}).logits
    real = mask.bool()
    assert torch.allclose(logits["flash_mla"][real], logits["eager"][real], rtol=1e-4, atol=1e-4)


def test_paged_forward_with_grad_raises_clearly():
    model = tiny_model("v3")
    model.set_attn_implementation("flash_mla")
    ids, mask = prompts(batch=1, pads=(0,))
    with pytest.raises(ValueError, match="inference-only"):
        model(ids, attention_mask=mask, use_cache=True, **{CACHE: LatentPagedCache(model.config)})


def test_static_cache_passed_by_user_matches_eager():
    """A StaticCache returns its whole buffer: flash_mla attends over the stored tokens only."""
    from transformers import StaticCache

    model = tiny_model("v3")
    ids, mask = prompts(batch=2, pads=(0, 6))
    outs = {}
    for implementation in ("eager", "flash_mla"):
        cache = StaticCache(config=model.config, max_cache_len=64)
        outs[implementation] = generate(model, implementation, ids, mask, **{CACHE: cache})
    assert torch.equal(outs["flash_mla"].sequences, outs["eager"].sequences)
    assert torch.allclose(torch.stack(outs["flash_mla"].scores), torch.stack(outs["eager"].scores), rtol=1e-4,
                          atol=1e-4)


def test_static_cache_without_a_mask_matches_eager_logits():
    from transformers import StaticCache

    model = tiny_model("v2")
    ids, _ = prompts(batch=2, length=20, pads=(0, 0))
    logits = {}
    for implementation in ("eager", "flash_mla"):
        model.set_attn_implementation(implementation)
        cache = StaticCache(config=model.config, max_cache_len=64)
        with torch.no_grad():
            first = model(ids[:, :17], use_cache=True, **{CACHE: cache}).logits
            second = model(ids[:, 17:], use_cache=True, **{CACHE: cache}).logits
        logits[implementation] = torch.cat((first, second), dim=1)
    assert torch.allclose(logits["flash_mla"], logits["eager"], rtol=1e-4, atol=1e-4)


def test_static_cache_that_is_too_small_is_refused_before_writing():
    from transformers import StaticCache

    model = tiny_model("v3")
    model.set_attn_implementation("flash_mla")
    ids, mask = prompts(batch=1, pads=(0,))
    cache = StaticCache(config=model.config, max_cache_len=24)
    with pytest.raises(ValueError, match=f"^{CACHE}: this StaticCache holds 24 tokens"):
        model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, **{CACHE: cache})
    assert int(cache.get_seq_length()) == 24  # the prompt and 4 tokens fit; the step that did not wrote nothing


def test_caches_that_drop_or_pad_tokens_are_refused_before_attending():
    import copy

    from transformers import DynamicCache

    model = tiny_model("v3")
    model.set_attn_implementation("flash_mla")
    ids, mask = prompts(batch=1, pads=(0,))
    windowed = copy.deepcopy(model.config)
    windowed.sliding_window = 8
    with pytest.raises(ValueError, match=f"^{CACHE}: .*sliding window"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2, **{CACHE: DynamicCache(config=windowed)})

    class PaddedCache(DynamicCache):  # returns more positions than it holds, and no capacity to explain them
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
            pad = lambda t: torch.cat((t, t.new_zeros(t.shape[:2] + (4,) + t.shape[3:])), dim=2)  # noqa: E731
            return pad(keys), pad(values)

    with pytest.raises(ValueError, match=f"^{CACHE}: this PaddedCache returned 24 positions"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2, **{CACHE: PaddedCache(config=model.config)})


def test_cache_built_for_more_layers_than_run_is_refused():
    model = tiny_model("v3")  # 2 layers
    model.set_attn_implementation("flash_mla")
    ids, mask = prompts(batch=1, length=10, pads=(0,))
    hand_built = LatentPagedCache(num_hidden_layers=3, latent_dim=576)
    with pytest.raises(ValueError, match="^num_hidden_layers: .*built for 3 layers but the forward pass wrote 2"):
        model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, **{CACHE: hand_built})
    assert hand_built.get_seq_length() == 0
    with pytest.raises(ValueError, match="^num_hidden_layers: "), torch.no_grad():
        model(ids, use_cache=True, **{CACHE: LatentPagedCache(num_hidden_layers=5, latent_dim=576)})

    pruned = random_model(make_config("deepseek_v3", base=TINY, num_hidden_layers=3), seed=4)
    pruned.model.layers = pruned.model.layers[:2]  # config.num_hidden_layers still says 3
    eager = generate(pruned, "eager", ids, mask, max_new_tokens=4).sequences  # eager runs the 2 layers left
    with pytest.raises(ValueError, match="built for 3 layers but the forward pass wrote 2"):
        generate(pruned, "flash_mla", ids, mask, max_new_tokens=4)
    pruned.config.num_hidden_layers = 2
    assert torch.equal(generate(pruned, "flash_mla", ids, mask, max_new_tokens=4).sequences, eager)


def test_exception_mid_forward_rolls_the_step_back():
    model = tiny_model("v3")
    ids, mask = prompts(batch=2, length=12, pads=(0, 4))
    cache = LatentPagedCache(model.config)
    first = generate(model, "flash_mla", ids, mask, max_new_tokens=5, **{CACHE: cache}).sequences
    lengths = cache.sequence_lengths
    mlp = model.model.layers[1].mlp
    steps = {"n": 0}

    def failing(hidden_states, _original=mlp.forward):
        steps["n"] += 1
        if steps["n"] == 3:  # the second decode step, in the last layer: every layer has written its latent
            raise RuntimeError("out of memory, say")
        return _original(hidden_states)

    mlp.forward = failing
    mask2 = torch.cat((mask, torch.ones(2, first.shape[1] - mask.shape[1], dtype=mask.dtype)), dim=1)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            generate(model, "flash_mla", first, mask2, max_new_tokens=6, **{CACHE: cache})
    finally:
        del mlp.forward
    # The prefill of the new tokens and one decode step are kept; the step that raised is not.
    assert cache.sequence_lengths == [length + 2 for length in lengths]
    assert cache.get_seq_length() == first.shape[1] + 1
    cache.crop(-2)
    resumed = generate(model, "flash_mla", first, mask2, max_new_tokens=6, **{CACHE: cache}).sequences
    assert torch.equal(resumed, generate(model, "eager", first, mask2, max_new_tokens=6).sequences)


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_beam_search_needs_no_spare_pages(name):
    """Beams of one prompt have one length; reordering them moves page ownership, so the pool of exactly
    rows x pages per row suffices."""
    model = tiny_model(name)
    ids, mask = prompts(batch=2, length=60, pads=(0, 20))
    beams, new_tokens = 3, 8
    rows_pages = 2 * beams * pages_for(60 + new_tokens - 1)
    cache = LatentPagedCache(model.config, max_pages=rows_pages)
    eager = generate(model, "eager", ids, mask, num_beams=beams, max_new_tokens=new_tokens).sequences
    flash = generate(model, "flash_mla", ids, mask, num_beams=beams, max_new_tokens=new_tokens, **{CACHE: cache})
    assert torch.equal(flash.sequences, eager)


def test_repeated_and_selected_rows_continue_like_eager():
    """batch_repeat_interleave / batch_select_indices on a prefilled cache, then generate() from it."""
    from transformers import DynamicCache

    model = tiny_model("v3")
    ids, mask = prompts(batch=2, length=12, pads=(0, 4))
    follow = torch.randint(3, 90, (4, 3), generator=torch.Generator().manual_seed(5))
    runs = {}
    for implementation, cache in (("eager", DynamicCache(config=model.config)),
                                  ("flash_mla", LatentPagedCache(model.config))):
        model.set_attn_implementation(implementation)
        with torch.no_grad():
            model(ids, attention_mask=mask, use_cache=True, **{CACHE: cache})
        cache.batch_repeat_interleave(2)  # rows 0, 0, 1, 1: each copy continues differently
        ids4, mask4 = ids.repeat_interleave(2, dim=0), mask.repeat_interleave(2, dim=0)
        ids4 = torch.cat((ids4, follow), dim=1)
        mask4 = torch.cat((mask4, torch.ones_like(follow)), dim=1)
        repeated = generate(model, implementation, ids4, mask4, max_new_tokens=5, **{CACHE: cache}).sequences
        cache.batch_select_indices(torch.tensor([3, 0]))
        kept = torch.cat((repeated[[3, 0], :-1], follow[:2]), dim=1)  # the last token was never fed back
        mask2 = torch.cat((mask4[[3, 0]], torch.ones(2, kept.shape[1] - mask4.shape[1], dtype=mask.dtype)), dim=1)
        selected = generate(model, implementation, kept, mask2, max_new_tokens=5, **{CACHE: cache}).sequences
        runs[implementation] = (repeated, selected)
    assert torch.equal(runs["flash_mla"][0], runs["eager"][0])
    assert torch.equal(runs["flash_mla"][1], runs["eager"][1])
