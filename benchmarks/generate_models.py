"""Whole models for the end-to-end benchmarks, built from a config with random weights directly on the device
(no checkpoint on disk, no download). Only this module knows the presets.

- "deepseek-v2-lite": DeepSeek-V2-Lite's exact shape: 27 layers, hidden 2048, 16 heads, q_lora_rank None,
  kv_lora_rank 512, qk_nope 128, qk_rope 64, v_head 128, first layer a dense MLP of 10944, then MoE with 64 routed
  experts of 1408 and 2 shared, top-6; vocabulary 102400; yarn rope, factor 40 on 4096, mscale 0.707
  (15.7 B parameters, 31.5 GB in bf16).
- "glm-4.7-flash": GLM-4.7-Flash's shape as transformers' glm4_moe_lite config gives it: 47 layers, hidden 2048,
  20 heads, q_lora_rank 768, kv_lora_rank 512, qk_nope 192, qk_rope 64 (interleaved), v_head 256, first layer a
  dense MLP of 10240, then 64 routed experts of 1536 and 1 shared, top-4; vocabulary 154880 (transformers'
  default; some descriptions of the model give 151552). About 31 B parameters: cut layers with `layers=` where it
  does not fit next to the cache.
- "deepseek-v3-dense": DeepSeek-V3's attention (hidden 7168, 128 heads, q_lora_rank 1536) with a dense MLP of
  4096 in every layer, vocabulary 4096, 2 layers: an attention-heavy model for the multi-GPU check. It overstates
  the end-to-end gain of a whole model; report the whole-model presets.
- "minicpm3-4b": MiniCPM3-4B's shape (transformers' minicpm3 defaults): 62 layers, hidden 2560, 40 heads,
  q_lora_rank 768, kv_lora_rank 256, qk_nope 64, qk_rope 32, v_head 64, dense MLP of 6400, vocabulary 73448; default
  rope (the released model's longrope factors are not part of the shape). Its latent (256 + 32) is not the sm_90
  kernel's: flash_mla decodes it on the Triton kernel (4.3 B parameters, 8.5 GB in bf16).
- "smoke": a DeepSeek-V2 shape small enough for a CPU test (2 layers, the first dense, the second MoE), with the
  real latent layout (kv_lora_rank 512 + qk_rope 64) so the kernel path applies on a GPU.

Random models must not stop early and padding needs an id: no BOS/EOS, pad id 0.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Preset:
    model_type: str
    fields: dict
    description: str


_DEEPSEEK_V2_LITE = dict(
    vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=27,
    num_attention_heads=16, num_key_value_heads=16, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6,
    first_k_dense_replace=1, topk_method="greedy", norm_topk_prob=False, routed_scaling_factor=1.0,
    q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
    max_position_embeddings=163840, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=40.0, original_max_position_embeddings=4096,
                         mscale=0.707, mscale_all_dim=0.707, beta_fast=32.0, beta_slow=1.0),
)

_GLM_4_7_FLASH = dict(
    vocab_size=154880, hidden_size=2048, intermediate_size=10240, moe_intermediate_size=1536, num_hidden_layers=47,
    num_attention_heads=20, num_key_value_heads=20, n_routed_experts=64, n_shared_experts=1, num_experts_per_tok=4,
    routed_scaling_factor=1.8, norm_topk_prob=True, n_group=1, topk_group=1, q_lora_rank=768, kv_lora_rank=512,
    qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=256, rope_interleave=True, max_position_embeddings=202752,
    rms_norm_eps=1e-5, tie_word_embeddings=False,
)

_DEEPSEEK_V3_DENSE = dict(
    vocab_size=4096, hidden_size=7168, intermediate_size=4096, moe_intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=128, num_key_value_heads=128, n_routed_experts=8, num_experts_per_tok=2, n_group=1,
    topk_group=1, first_k_dense_replace=2, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
    qk_rope_head_dim=64, v_head_dim=128, max_position_embeddings=163840, tie_word_embeddings=False,
)

_MINICPM3_4B = dict(
    vocab_size=73448, hidden_size=2560, intermediate_size=6400, num_hidden_layers=62, num_attention_heads=40,
    num_key_value_heads=40, q_lora_rank=768, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
    max_position_embeddings=32768, tie_word_embeddings=False,
)

_SMOKE = dict(
    vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2,
    first_k_dense_replace=1, topk_method="greedy", q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=16,
    qk_rope_head_dim=64, v_head_dim=16, max_position_embeddings=4096, tie_word_embeddings=False,
)

PRESETS = {
    "deepseek-v2-lite": Preset("deepseek_v2", _DEEPSEEK_V2_LITE, "DeepSeek-V2-Lite shape (MoE, yarn)"),
    "glm-4.7-flash": Preset("glm4_moe_lite", _GLM_4_7_FLASH, "GLM-4.7-Flash shape (glm4_moe_lite, MoE)"),
    "deepseek-v3-dense": Preset("deepseek_v3", _DEEPSEEK_V3_DENSE, "DeepSeek-V3 attention, dense MLP 4096"),
    "minicpm3-4b": Preset("minicpm3", _MINICPM3_4B, "MiniCPM3-4B shape (minicpm3, latent 256 + 32: Triton kernel)"),
    "smoke": Preset("deepseek_v2", _SMOKE, "tiny DeepSeek-V2 shape (CPU smoke test)"),
}

_GENERATION_IDS = dict(bos_token_id=None, eos_token_id=None, pad_token_id=0)


def make_config(preset: str, layers: int | None = None):
    """The transformers config of `preset`, cut to `layers` decoder layers if given."""
    from transformers import CONFIG_MAPPING

    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    spec = PRESETS[preset]
    if spec.model_type not in CONFIG_MAPPING:
        import transformers

        raise ValueError(f"preset {preset!r}: transformers {transformers.__version__} has no {spec.model_type!r} model")
    fields = dict(spec.fields, **_GENERATION_IDS)
    if layers is not None:
        if layers < 1:
            raise ValueError(f"layers: must be >= 1, got {layers}")
        fields["num_hidden_layers"] = layers
        if "first_k_dense_replace" in fields:
            fields["first_k_dense_replace"] = min(fields["first_k_dense_replace"], layers)
    if spec.model_type == "glm4_moe_lite":  # the first layer dense, the rest MoE, as the released model
        fields["mlp_layer_types"] = ["dense"] + ["sparse"] * (fields["num_hidden_layers"] - 1)
    return CONFIG_MAPPING[spec.model_type](**fields)


def build_model(config, dtype=torch.bfloat16, device="cpu", attn_implementation="sdpa", seed=0,
                experts_implementation: str | None = None):
    """The causal LM of `config` with its default random initialisation, allocated directly on `device`."""
    from transformers import AutoModelForCausalLM

    kwargs = {"experts_implementation": experts_implementation} if experts_implementation else {}
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation,
                                                 **kwargs)
    model.eval().requires_grad_(False)
    for name, value in _GENERATION_IDS.items():
        setattr(model.generation_config, name, value)
    return model


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def describe(config) -> dict:
    """The dimensions a reader of a benchmark needs, as plain JSON values."""
    keys = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "q_lora_rank", "kv_lora_rank",
            "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size", "moe_intermediate_size",
            "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "vocab_size")
    out = {k: getattr(config, k, None) for k in keys}
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("rope_type", "default") != "default":
        out["rope"] = {k: rope.get(k) for k in ("rope_type", "factor", "original_max_position_embeddings", "mscale",
                                                  "mscale_all_dim")}
    return out
