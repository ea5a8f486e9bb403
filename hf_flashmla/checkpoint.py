"""Small random checkpoints of the MLA families flash_mla serves (no downloads), for the main job
(`python -m hf_flashmla`), tests and scripts.

The attention keeps the real latent shape (kv_lora_rank 512 + qk_rope_head_dim 64, so the kernel
path applies) unless told otherwise; everything else is shrunk. Weights are random but scaled so that
greedy decoding does not collapse onto one token (which would make token comparisons meaningless).
Shapes are given under DeepSeek-V3's config names (SMALL_V3, TINY); make_config renames them for each
family (e.g. LongCat-Flash's num_layers and ffn sizes, Kimi-Linear's layer_types).
"""
from __future__ import annotations

import importlib
import inspect
import math
import os

import torch

# Where the main job (`python -m hf_flashmla`) and `hf-flashmla evaluate` build their demo checkpoint.
DEMO_CHECKPOINT = "hf_flashmla_demo_checkpoint"

SMALL_V3 = dict(
    vocab_size=512, hidden_size=256, intermediate_size=512, moe_intermediate_size=128, num_hidden_layers=4,
    num_attention_heads=16, num_key_value_heads=16, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
    n_group=1, topk_group=1, first_k_dense_replace=1, kv_lora_rank=512, q_lora_rank=128, qk_rope_head_dim=64,
    qk_nope_head_dim=64, v_head_dim=64, max_position_embeddings=4096, rope_interleave=True,
)

TINY = dict(
    vocab_size=96, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
    n_group=1, topk_group=1, first_k_dense_replace=1, kv_lora_rank=512, q_lora_rank=32, qk_rope_head_dim=64,
    qk_nope_head_dim=16, v_head_dim=16, max_position_embeddings=1024,
)


# The families make_config builds: the dense MLA families flash_mla serves, and kimi_k25 (a vision-language
# model whose text model is DeepSeek-V3).
ARCHITECTURES = ("deepseek_v3", "deepseek_v2", "glm4_moe_lite", "longcat_flash", "kimi_linear", "kimi_k25",
                 "bailing_hybrid", "mistral4", "minicpm3", "youtu", "axk1", "sarvam_mla")
# Head shapes of the real models that differ from SMALL_V3's, kept by the default small model of the family:
# GLM-4.7-Flash's 20 heads (not a power of two) and v_head_dim 256.
REAL_HEAD_SHAPES = {
    "glm4_moe_lite": dict(num_attention_heads=20, num_key_value_heads=20, q_lora_rank=768, qk_nope_head_dim=192,
                          v_head_dim=256),
}
_MOE_KEYS = ("moe_intermediate_size", "n_routed_experts", "num_experts_per_tok", "n_shared_experts", "n_group",
             "topk_group", "first_k_dense_replace")


def _alternate_with_linear_attention(values: dict, linear_head_dim: str, linear_heads: str) -> dict:
    """Kimi-Linear / Bailing-hybrid: each of the num_hidden_layers MLA layers follows a linear-attention layer."""
    layers = values["num_hidden_layers"]
    values["num_hidden_layers"] = 2 * layers
    values["layer_types"] = ["linear_attention", "full_attention"] * layers
    values["num_local_experts"] = values.pop("n_routed_experts")
    values[linear_head_dim] = values["qk_nope_head_dim"]
    if linear_heads:
        values[linear_heads] = values["num_attention_heads"]
    values.pop("first_k_dense_replace", None)
    return values


def _family_values(architecture: str, values: dict) -> dict:
    """DeepSeek-V3-named values -> the family's config arguments."""
    if architecture in ("deepseek_v2", "minicpm3", "youtu"):
        values.pop("rope_interleave", None)
        for key in ("n_group", "topk_group") if architecture == "deepseek_v2" else _MOE_KEYS:
            values.pop(key, None)
        if architecture != "deepseek_v2":
            values["tie_word_embeddings"] = False  # tied tiny heads decode one token over and over
    elif architecture == "longcat_flash":
        layers = values.pop("num_hidden_layers")
        values.update(num_layers=layers, num_hidden_layers=2 * layers,  # two MLA sublayers per decoder layer
                      ffn_hidden_size=values.pop("intermediate_size"),
                      expert_ffn_hidden_size=values.pop("moe_intermediate_size"),
                      moe_topk=values.pop("num_experts_per_tok"),
                      zero_expert_num=max(values["n_routed_experts"] // 2, 1))  # zero-computation experts
        for key in ("n_shared_experts", "n_group", "topk_group", "first_k_dense_replace", "rope_interleave"):
            values.pop(key, None)
    elif architecture == "kimi_linear":
        values = _alternate_with_linear_attention(values, "linear_head_dim", "linear_num_heads")
        values.pop("rope_interleave", None)
    elif architecture == "bailing_hybrid":
        values = _alternate_with_linear_attention(values, "head_dim", None)
        values.update(num_mtp_layers=0)
        values.pop("rope_interleave", None)
    elif architecture == "mistral4":
        # Llama-4 attention scaling from position 16 on, so short test sequences see it (the real models: 8192).
        values["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                     "original_max_position_embeddings": 16, "beta_fast": 32.0, "beta_slow": 1.0,
                                     "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1}
        values["max_position_embeddings"] = 64
    if architecture in ("longcat_flash", "axk1") and values.get("q_lora_rank") is None:
        raise ValueError(f"q_lora_rank: {architecture} always projects the query through q_a/q_b, got None")
    return values


def make_config(architecture: str = "deepseek_v3", base: dict | None = None, **overrides):
    """The config of a small model of `architecture` (ARCHITECTURES) from `base` (default SMALL_V3 with the
    family's REAL_HEAD_SHAPES) with overrides, in DeepSeek-V3's names. rope_scaling={...} is accepted and passed
    as the release expects (rope_parameters). kimi_k25 gets a DeepSeek-V3 text config of that shape and a
    one-layer vision tower."""
    from transformers import AutoConfig

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture: expected one of {ARCHITECTURES}, got {architecture!r}")
    values = dict(SMALL_V3 if base is None else base)
    if base is None:
        values.update(REAL_HEAD_SHAPES.get(architecture, {}))
    values.update(overrides)
    if architecture == "kimi_k25":
        text = make_config("deepseek_v3", values)
        vision = dict(patch_size=14, pos_emb_height=4, pos_emb_width=4, pos_emb_time=2, num_attention_heads=2,
                      num_hidden_layers=1, hidden_size=32, intermediate_size=64)
        return AutoConfig.for_model("kimi_k25", text_config=text.to_dict(), vision_config=vision,
                                    projection_hidden_size=32, tie_word_embeddings=False,
                                    pad_token_id=text.pad_token_id)
    rope_scaling = values.pop("rope_scaling", None)
    values = _family_values(architecture, values)
    values.setdefault("pad_token_id", 0)
    values.setdefault("bos_token_id", 1)
    values.setdefault("eos_token_id", None)
    config = AutoConfig.for_model(architecture, **values)
    if rope_scaling is not None:
        parameters = dict(getattr(config, "rope_parameters", None) or {})
        parameters.update(rope_scaling)
        parameters.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
        config = type(config)(**{**config.to_dict(), "rope_parameters": parameters})
    return config


def dense_mlp(config):
    """The config with dense MLPs in every layer where the family lets it choose (mlp_layer_types,
    first_k_dense_replace): bf16 rounding can flip MoE routing, which would dominate a logits comparison.
    LongCat-Flash's layers are all MoE."""
    text_config = config.get_text_config(decoder=True)
    if getattr(text_config, "mlp_layer_types", None):
        text_config.mlp_layer_types = ["dense"] * len(text_config.mlp_layer_types)
    if getattr(text_config, "first_k_dense_replace", None) is not None:
        text_config.first_k_dense_replace = text_config.num_hidden_layers
    return config


def model_class(config):
    """The generating class of the config's family: its *ForCausalLM, or *ForConditionalGeneration for a
    vision-language model (kimi_k25); AutoModelForCausalLM does not list every family (mistral4). A model type
    with a config only (sarvam_mla) gets the class that AutoModelForCausalLM builds for it."""
    try:
        modeling = importlib.import_module(f"transformers.models.{config.model_type}.modeling_{config.model_type}")
    except ModuleNotFoundError:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
        if name is None:
            raise ValueError(f"config: model type {config.model_type!r} has no modeling module and no causal-LM "
                             f"class in this transformers release") from None
        return getattr(transformers, name)
    for suffix in ("ForCausalLM", "ForConditionalGeneration"):
        for name, value in vars(modeling).items():
            if inspect.isclass(value) and value.__module__ == modeling.__name__ and name.endswith(suffix):
                return value
    raise ValueError(f"config: no *ForCausalLM / *ForConditionalGeneration class in {modeling.__name__}")


def randomize(model: torch.nn.Module, seed: int = 0, gain: float = 0.5, head_gain: float = 8.0) -> torch.nn.Module:
    """Deterministic random weights: matrices N(0, gain^2 / fan_in) (activations stay O(1), so bf16 runs
    stay within ~1e-2 of fp32), embeddings N(0, 1), lm_head scaled by head_gain so that greedy decoding
    gives varied tokens. Norm weights and biases keep their init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                continue
            values = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            if "embed_tokens" not in name:
                values = values * (gain / math.sqrt(parameter.shape[-1]))
            if "lm_head" in name:
                values = values * head_gain
            parameter.copy_(values.to(parameter.dtype))
    return model


def random_model(config, seed: int = 0, dtype: torch.dtype = torch.float32, attn_implementation: str = "eager"):
    torch.manual_seed(seed)
    model = model_class(config)._from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return randomize(model, seed).eval()


def build_checkpoint(path: str, architecture: str = "deepseek_v3", seed: int = 0, dtype: torch.dtype = torch.bfloat16,
                     log=print, **overrides) -> str:
    """Writes a random small checkpoint (config.json + model.safetensors) to `path` unless one is there."""
    if os.path.exists(os.path.join(path, "config.json")):
        log(f"[checkpoint] using existing {path}")
        return path
    log(f"[checkpoint] building a random {architecture} model ({overrides or 'default small shape'})")
    config = make_config(architecture, **overrides)
    model = random_model(config, seed=seed, dtype=torch.float32).to(dtype)
    os.makedirs(path, exist_ok=True)
    log(f"[checkpoint] saving to {path} (safetensors)")
    model.save_pretrained(path, safe_serialization=True)
    return path
