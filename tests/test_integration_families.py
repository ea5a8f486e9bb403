"""attn_implementation="flash_mla" on every served MLA family against eager (tiny random models, CPU, fp32).

DeepSeek-V2/V3 have their own file (test_integration_generate.py). Here: the families whose attention is
DeepSeek's with the adapter's hooks (mla_adapter.py: rope variants, LongCat's lora scales and two MLA
sublayers per decoder layer, Mistral-4's per-position query scale, Bailing's output gate), the hybrid ones
(MLA layers between linear-attention layers, one HybridLatentCache), kimi_k25 (a vision-language model whose
text model is DeepSeek-V3), and the refusals (DSA sparse MLA, unknown MLA maths). A family the installed
transformers does not have is skipped with the reason.
"""
import ast
import importlib
import pathlib

import pytest
import torch

from hf_flashmla import HybridLatentCache, LatentPagedCache
from hf_flashmla.checkpoint import TINY, make_config, model_class, random_model
from hf_flashmla.dispatch import KERNEL, BackendChoice
from hf_flashmla.testing import left_padded_ids
from hf_flashmla.transformers_integration import (attention, attn_implementation_for, cache_kwarg, call_counts,
                                                  decode_graphs, reset_call_counts)
from hf_flashmla.transformers_integration.families import (CONFIG_ONLY_FAMILIES, MLA_FAMILIES, discover, has_config,
                                                            in_this_release)
from hf_flashmla.transformers_integration.mla_adapter import (ROPE_BY_CONFIG, ROPE_COMPLEX, ROPE_INTERLEAVE,
                                                              ROPE_NONE, ROPE_PLAIN, MLAForm, UnservedAttention,
                                                              mla_form)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # tests/conftest.py

CACHE = cache_kwarg()

# name: (architecture, overrides of TINY)
CONFIGS = {
    # GLM-4.7-Flash's 20 heads (not a power of two) and v_head_dim 256 in W_UV
    "glm4_moe_lite": ("glm4_moe_lite", dict(num_attention_heads=20, num_key_value_heads=20, v_head_dim=256)),
    # a tensor-parallel shard's head count (GLM-4.7-Flash's 20 over two ranks)
    "glm4_moe_lite_h10": ("glm4_moe_lite", dict(num_attention_heads=10, num_key_value_heads=10, rope_interleave=False)),
    "longcat_flash": ("longcat_flash", {}),
    "kimi_linear": ("kimi_linear", {}),
    "kimi_k25": ("kimi_k25", {}),
    "bailing_hybrid": ("bailing_hybrid", {}),
    "mistral4": ("mistral4", {}),
    # MiniCPM3's own latent (256 + 32 for the real model) is not the kernel's 512 + 64: the reference path
    "minicpm3": ("minicpm3", dict(kv_lora_rank=32, qk_rope_head_dim=16)),
    "youtu": ("youtu", {}),
    "axk1": ("axk1", {}),
    "sarvam_mla": ("sarvam_mla", {}),  # a config only: built as DeepseekV3ForCausalLM
}
HYBRID = {"kimi_linear", "bailing_hybrid"}

_models = {}


def require(architecture):
    if architecture == "kimi_k25":
        architecture = "deepseek_v3"
    if not in_this_release(architecture):
        pytest.skip(f"{architecture} is not in this transformers release")


def tiny_model(name):
    architecture, overrides = CONFIGS[name]
    require(architecture)
    if architecture == "kimi_k25":
        pytest.importorskip("transformers.models.kimi_k25.modeling_kimi_k25", reason="no kimi_k25 in this release")
    if name not in _models:
        _models[name] = random_model(make_config(architecture, base=TINY, **overrides), seed=1)
    return _models[name]


def prompts(batch=3, length=20, pads=(0, 7, 13), seed=0):
    return left_padded_ids(batch, length, pads[:batch], TINY["vocab_size"], seed)


def use(model, implementation):
    model.set_attn_implementation(attn_implementation_for(model.config, implementation))


def generate(model, implementation, ids, mask=None, **kwargs):
    use(model, implementation)
    kwargs.setdefault("max_new_tokens", 8)
    kwargs.setdefault("do_sample", False)
    return model.generate(ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True, **kwargs)


def assert_same_generation(model, ids, mask=None, seed=None, **kwargs):
    if seed is not None:
        torch.manual_seed(seed)
    eager = generate(model, "eager", ids, mask, **kwargs)
    reset_call_counts()
    if seed is not None:
        torch.manual_seed(seed)
    flash = generate(model, "flash_mla", ids, mask, **kwargs)
    assert call_counts["paged_reference"] + call_counts["paged_kernel"] + call_counts["paged_triton"] > 0
    assert torch.equal(flash.sequences, eager.sequences)
    if not kwargs.get("num_beams"):
        assert torch.allclose(torch.stack(flash.scores), torch.stack(eager.scores), rtol=1e-4, atol=1e-4)
    return flash


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_left_padded_batch_matches_eager(name):
    model = tiny_model(name)
    out = assert_same_generation(model, *prompts())  # a 20-token prompt: dense prefill, then paged decode
    cache = out.get(CACHE)
    assert type(cache) is (HybridLatentCache if name in HYBRID else LatentPagedCache)
    text_config = model.config.get_text_config(decoder=True)
    layer_types = getattr(text_config, "layer_types", None) or ["full_attention"] * text_config.num_hidden_layers
    for layer, kind in enumerate(layer_types):  # pages exactly at the MLA layers' own indices
        assert (cache.pool(layer) is not None) == (kind == "full_attention")


def other_latent_model(name):
    """MiniCPM3's latent (here 32 + 16), Mistral-4's (256 + 64): not the sm_90 kernel's 512 + 64."""
    if name == "minicpm3":
        return tiny_model(name)
    require(name)
    return random_model(make_config(name, base=TINY, kv_lora_rank=256), seed=1)


def triton_interpreted():
    triton_decode = pytest.importorskip("hf_flashmla.triton_decode", reason="Triton is not installed")
    if not triton_decode.INTERPRETED:
        pytest.skip("Triton runs compiled here (CUDA present): the GPU tests cover it")


@pytest.mark.parametrize("name", ["minicpm3", "mistral4"])
@pytest.mark.parametrize("chosen", ["triton", "cuda_sm90"])
def test_other_latents_decode_on_the_triton_kernel(name, chosen, monkeypatch):
    """A latent other than 512 + 64 decodes on the Triton kernel where the backend is Triton (GPUs other than
    Hopper) and where it is the sm_90 kernel (Hopper: that kernel takes DeepSeek's shape only). On the CPU the
    choice is stood in for and Triton runs under its interpreter."""
    triton_interpreted()
    model = other_latent_model(name)
    monkeypatch.setattr(attention, "backend", lambda *args, **kwargs: BackendChoice(chosen, "stood in for"))
    assert_same_generation(model, *prompts(batch=2))
    assert call_counts["paged_triton"] > 0 and call_counts["paged_reference"] == 0


def test_other_latents_on_hopper_without_triton_name_the_way_out(monkeypatch):
    model = other_latent_model("minicpm3")
    monkeypatch.setattr(attention, "backend", lambda *args, **kwargs: BackendChoice(KERNEL, "stood in for"))
    monkeypatch.setattr(attention, "triton_import_error", lambda: "ModuleNotFoundError: triton")
    use(model, "flash_mla")
    with pytest.raises(ValueError, match="kv_lora_rank=32.*Triton is not importable.*HF_FLASHMLA_BACKEND=reference"):
        model.generate(*prompts(batch=1)[:1], max_new_tokens=2, do_sample=False)


def test_latent_that_no_kernel_takes_on_hopper_names_the_way_out(monkeypatch):
    """kv_lora_rank 48 is not a power of two: neither kernel takes it, and on Hopper the reference is opt-in."""
    require("minicpm3")
    pytest.importorskip("triton")
    model = random_model(make_config("minicpm3", base=TINY, kv_lora_rank=48, qk_rope_head_dim=16), seed=1)
    monkeypatch.setattr(attention, "backend", lambda *args, **kwargs: BackendChoice(KERNEL, "stood in for"))
    use(model, "flash_mla")
    with pytest.raises(ValueError, match="kv_lora_rank=48, qk_rope_head_dim=16: set HF_FLASHMLA_BACKEND=reference"):
        model.generate(*prompts(batch=1)[:1], max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize("name", ["glm4_moe_lite", "longcat_flash", "kimi_linear", "bailing_hybrid", "mistral4"])
def test_short_left_padded_prompt_runs_paged_from_the_first_chunk(name):
    ids, mask = prompts(batch=3, length=12, pads=(0, 5, 11))  # 12 <= DECODE_MAX_QUERY: no dense prefill
    reset_call_counts()
    assert_same_generation(tiny_model(name), ids, mask)
    assert call_counts["dense"] == 0


@pytest.mark.parametrize("name", list(CONFIGS))
def test_beam_search_matches_eager(name):
    ids, mask = prompts(batch=2, pads=(0, 6))
    assert_same_generation(tiny_model(name), ids, mask, num_beams=3, max_new_tokens=6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prompt_lookup_decoding_matches_eager(name):
    model = tiny_model(name)
    ids, _ = prompts(batch=1, length=30, pads=(0,))
    ids[0, 15:25] = ids[0, 3:13]  # repetition so that candidates get accepted and rejected
    use(model, "eager")
    try:
        model.generate(ids, max_new_tokens=2, do_sample=False, prompt_lookup_num_tokens=4)
    except ValueError as error:  # transformers 5.17 refuses it for linear-attention (stateful) models, eager too
        pytest.skip(f"this transformers release refuses assisted decoding for {type(model).__name__}: {error}")
    assert_same_generation(model, ids, None, prompt_lookup_num_tokens=4, max_new_tokens=12)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sampling_with_a_seed_matches_eager(name):
    assert_same_generation(tiny_model(name), *prompts(batch=2, pads=(0, 5)), seed=7, do_sample=True, top_k=5)


@pytest.mark.parametrize("name", ["longcat_flash", "mistral4", "glm4_moe_lite", "youtu"])
def test_prefill_in_blocks_matches_eager(name):
    """A budget of 7 tokens (prefill_blocks): each block's positions reach the family's hooks (Mistral-4's
    per-position query scale) and each block attends to its row's pages."""
    model = tiny_model(name)
    ids, mask = prompts(batch=2, length=24, pads=(0, 9))
    reset_call_counts()
    assert_same_generation(model, ids, mask, max_new_tokens=4, prefill_tokens=7)
    assert call_counts["prefill_blocks"] == 2 * 4  # rows x ceil(24 / 7)


@pytest.mark.parametrize("name", sorted(HYBRID))
def test_hybrid_models_prefill_in_one_pass(name):
    """Row blocks would split the linear-attention layers' batch-wide states: a HybridLatentCache prefills whole."""
    model = tiny_model(name)
    reset_call_counts()
    assert_same_generation(model, *prompts(batch=2, length=24, pads=(0, 9)), max_new_tokens=4, prefill_tokens=7)
    assert call_counts["prefill_blocks"] == 0


@pytest.mark.parametrize("name", list(CONFIGS))
def test_decode_graphs_replay_for_every_family(name, monkeypatch):
    """CUDA-graph decode steps (decode_graphs), emulated on the CPU (each replay runs the captured step again
    through the bucket's tensors): the family's hooks see the graph's static position ids; a hybrid model
    decodes eagerly (its linear layers' states are not in the graph arena)."""
    monkeypatch.setattr(decode_graphs, "EMULATE_ON_CPU", True)
    model = tiny_model(name)
    try:
        assert_same_generation(model, *prompts(), max_new_tokens=6)
        runner = model.__dict__.get("_hf_flashmla_decode_runner")
        replays = 0 if runner is None else runner.replays
        assert replays == (0 if name in HYBRID else 5)  # every step after the prefill
    finally:
        decode_graphs.release(model)
        model.__dict__.pop("_hf_flashmla_decode_runner", None)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_without_cache_matches_eager_logits(name):
    model = tiny_model(name)
    ids, mask = prompts()
    logits = {}
    for implementation in ("eager", "flash_mla"):
        use(model, implementation)
        with torch.no_grad():
            logits[implementation] = model(ids, attention_mask=mask, use_cache=False).logits
    real = mask.bool()
    assert torch.allclose(logits["flash_mla"][real], logits["eager"][real], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------- the structure
EXPECTED_FORMS = {
    "deepseek_v2": MLAForm(ROPE_COMPLEX),
    "deepseek_v3": MLAForm(ROPE_BY_CONFIG),
    "glm4_moe_lite": MLAForm(ROPE_BY_CONFIG),
    "youtu": MLAForm(ROPE_BY_CONFIG),
    "axk1": MLAForm(ROPE_BY_CONFIG),
    "minicpm3": MLAForm(ROPE_PLAIN),
    "longcat_flash": MLAForm(ROPE_INTERLEAVE, lora_scales=True),
    "kimi_linear": MLAForm(ROPE_NONE),
    "bailing_hybrid": MLAForm(ROPE_INTERLEAVE, head_gate=True),
    "mistral4": MLAForm(ROPE_BY_CONFIG, position_query_scale=True),
}
SPARSE = ("deepseek_v32", "glm_moe_dsa", "glm5_next", "axk2", "hy_v4", "hy_v4_vl", "dots3_note", "mistral_large4")


@pytest.mark.parametrize("model_type", MLA_FAMILIES)
def test_each_family_is_served_or_refused_by_its_structure(model_type):
    require(model_type)
    family = discover([model_type])[model_type]
    assert family.attention_classes, f"no MLA attention class found in {model_type}"
    if model_type in SPARSE:
        assert not family.served and family.refusal.sparse
        return
    assert family.served, family.refusal
    assert set(family.attention_classes.values()) == {EXPECTED_FORMS[model_type]}


def test_every_mla_module_of_the_release_is_listed():
    """The grep the family list came from: every modeling module that builds kv_a_proj_with_mqa is in
    MLA_FAMILIES (or is kimi_k25's text model's), so a new release's MLA family shows up here."""
    import transformers

    models = pathlib.Path(transformers.__file__).parent / "models"
    found = {path.parent.name for path in models.glob("*/modeling_*.py")
             if path.stem == f"modeling_{path.parent.name}" and "kv_a_proj_with_mqa" in path.read_text()}
    assert found <= set(MLA_FAMILIES), sorted(found - set(MLA_FAMILIES))


def test_every_config_only_mla_model_type_is_listed():
    """A model type whose auto classes are another MLA family's (sarvam_mla: DeepseekV3ForCausalLM) is in
    CONFIG_ONLY_FAMILIES, mapped to that family, so that it is listed with the served families."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

    owner = {}  # class name -> the MLA family whose modeling module defines it
    for family in discover(MLA_FAMILIES).values():
        for cls in family.model_classes:
            owner[cls.__name__] = family.model_type
    expected = {}
    for mapping in (MODEL_MAPPING_NAMES, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        for model_type, name in mapping.items():
            # A family's own sub-model types (glm5_next_text, ...) are its classes: served or refused with it.
            if (model_type not in MLA_FAMILIES and isinstance(name, str) and name in owner
                    and not model_type.startswith(owner[name] + "_")):
                expected[model_type] = owner[name]
    listed = {alias: family for alias, family in CONFIG_ONLY_FAMILIES.items() if has_config(alias)}
    assert expected == listed


def test_config_only_family_is_listed_as_served():
    require("sarvam_mla")
    from hf_flashmla.transformers_integration import register, served_families

    register()
    assert "sarvam_mla" in served_families() and "deepseek_v3" in served_families()


def _attention_class(forward_body):
    namespace = {}
    exec(f"def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, **kwargs):\n"
         f"    {forward_body}\n", namespace)
    return type("SomeAttention", (torch.nn.Module,), {"forward": namespace["forward"]})


def test_unknown_mla_maths_is_refused_with_what_it_reads():
    cls = _attention_class("x = self.kv_a_layernorm(self.kv_a_proj_with_mqa(hidden_states)); "
                           "return self.o_proj(x * self.sinks), None")
    with pytest.raises(UnservedAttention, match=r"reads \['sinks'\]") as error:
        mla_form(cls)
    assert not error.value.sparse
    with pytest.raises(UnservedAttention, match="not multi-head latent attention"):
        mla_form(_attention_class("return self.o_proj(self.kv_a_proj_with_mqa(hidden_states)), None"))
    sparse = _attention_class("x = self.kv_a_layernorm(self.kv_a_proj_with_mqa(hidden_states)); "
                              "self.indexer(x); return self.o_proj(x), None")
    with pytest.raises(UnservedAttention, match="top-k") as error:
        mla_form(sparse)
    assert error.value.sparse


# --------------------------------------------------------------------------------------- refusals
def tiny_sparse_model(model_type):
    require(model_type)
    values = dict(TINY, index_topk=4, index_head_dim=96, index_n_heads=2, pad_token_id=0, eos_token_id=None)
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **values)
    return model_class(config)._from_config(config, attn_implementation="eager").eval()


@pytest.mark.parametrize("model_type", ["deepseek_v32", "glm_moe_dsa"])
def test_sparse_mla_is_refused_naming_the_missing_kernel(model_type):
    model = tiny_sparse_model(model_type)
    with pytest.raises(ValueError, match="no sparse top-k decode kernel"):
        model.set_attn_implementation("flash_mla")
    with pytest.raises(ValueError, match="no sparse top-k decode kernel"):
        type(model)._from_config(model.config, attn_implementation="flash_mla")
    # Given the name by hand past the load-time check, its attention still refuses to run (never dense).
    model.config._attn_implementation_internal = "flash_mla"
    with pytest.raises(NotImplementedError, match="no sparse top-k decode kernel"):
        model(torch.tensor([[5, 6, 7]]))


@pytest.mark.parametrize("model_type", SPARSE)
def test_every_sparse_family_is_refused_at_load(model_type):
    """On the meta device with the family's default (real-size) config: the check runs before any weight."""
    require(model_type)
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    with torch.device("meta"), pytest.raises(ValueError, match="sparse .DSA. multi-head latent attention"):
        model_class(config)._from_config(config, attn_implementation="flash_mla")


def test_composite_model_given_the_name_for_all_sub_models_is_told_the_dict_form():
    model = tiny_model("kimi_k25")
    with pytest.raises(ValueError, match=r"text model \(deepseek_v3\) is: pass attn_implementation=\{'text_config'"):
        model.set_attn_implementation("flash_mla")
    use(model, "flash_mla")
    assert model.config.get_text_config(decoder=True)._attn_implementation == "flash_mla"


def test_position_scaled_query_without_position_ids_raises():
    model = tiny_model("mistral4")
    use(model, "flash_mla")
    attention = model.model.layers[0].self_attn
    hidden = torch.randn(1, 3, TINY["hidden_size"])
    position_embeddings = model.model.rotary_emb(hidden, torch.arange(3)[None])
    with pytest.raises(ValueError, match="^position_ids: Mistral4Attention scales the query by position"):
        attention(hidden, position_embeddings, None, position_ids=None)


# ------------------------------------------------------------------------------------ hybrid cache
def test_hybrid_cache_holds_pages_for_mla_layers_and_state_for_linear_layers():
    require("kimi_linear")
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    config = make_config("kimi_linear", base=TINY)  # layer_types: linear, full, linear, full
    with pytest.raises(ValueError, match="^config: .*HybridLatentCache"):
        LatentPagedCache(config)
    cache = HybridLatentCache(config, max_pages=4)
    assert cache.latent_layers == (1, 3) and len(cache) == 4
    assert cache.is_linear == [True, False, True, False]
    assert all(isinstance(cache.layers[i], LinearAttentionCacheLayerMixin) for i in (0, 2))
    latent = torch.randn(2, 5, 576)
    with pytest.raises(ValueError, match="^layer_idx: layer 0 stores no latent"):
        cache.write(0, latent)
    cache.write(1, latent)
    cache.write(3, latent)
    assert cache.sequence_lengths == [5, 5]  # the step is complete once the MLA layers wrote (not rolled back)
    cache.reorder_cache(torch.tensor([1, 1]))
    assert cache.sequence_lengths == [5, 5]


def test_hybrid_cache_refuses_what_it_cannot_undo_or_hold():
    require("kimi_linear")
    config = make_config("kimi_linear", base=TINY)
    cache = HybridLatentCache(config, max_pages=4)
    for layer in (1, 3):
        cache.write(layer, torch.randn(2, 5, 576))
    cache.crop(0)
    cache.crop(1000)  # keeps every position: nothing to undo
    with pytest.raises(ValueError, match="^tokens_to_remove: .*activate_past_recording"):
        cache.crop(-1)  # the linear layers recorded no past states
    assert cache.sequence_lengths == [5, 5] and cache.get_seq_length() == 5
    for bad in (-1, 2.5, "x", True):
        with pytest.raises(ValueError, match="^recurrent_states_to_keep:"):
            cache.activate_past_recording(recurrent_states_to_keep=bad)
    with pytest.raises(ValueError, match="^layer_idx:"):
        cache.is_recording_past(10)
    longer = make_config("kimi_linear", base=TINY)
    longer.layer_types = list(longer.layer_types) + ["linear_attention", "full_attention"]
    with pytest.raises(ValueError, match="^config: layer_types has 6 entries for num_hidden_layers = 4"):
        HybridLatentCache(longer)


@pytest.mark.parametrize("latent_layers", [[], [4], [-1], [1.0], [True]])
def test_latent_layers_are_checked(latent_layers):
    with pytest.raises(ValueError, match="^latent_layers: expected layer indices in"):
        LatentPagedCache(num_hidden_layers=4, latent_dim=8, latent_layers=latent_layers)


def test_no_import_circle_in_the_package():
    """Module-level imports between hf_flashmla's modules form no cycle (the package __init__ files aside:
    importing a submodule runs them, so they may gather what they re-export)."""
    package = pathlib.Path(importlib.import_module("hf_flashmla").__file__).parent
    graph = {}
    for path in package.rglob("*.py"):
        if path.name == "__init__.py":
            continue
        name = ".".join(("hf_flashmla",) + path.relative_to(package).with_suffix("").parts)
        imported = set()
        for node in ast.parse(path.read_text()).body:  # module level only: function-local imports are lazy
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hf_flashmla"):
                imported |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("hf_flashmla")}
        graph[name] = imported
    modules = set(graph)
    graph = {name: {target for target in targets if target in modules and target != name}
             for name, targets in graph.items()}

    def reaches(start, goal, seen):
        return any(target == goal or (target not in seen and reaches(target, goal, seen | {target}))
                   for target in graph[start])

    circular = sorted(name for name in graph if reaches(name, name, {name}))
    assert not circular, circular
