"""Small random DeepSeek-V2/V3-architecture models and checkpoints (no downloads), for the main job
(`python -m hf_flashmla`), tests and scripts.

The attention keeps the real latent shape (kv_lora_rank 512 + qk_rope_head_dim 64, so the kernel
path applies) unless told otherwise; everything else is shrunk. Weights are random but scaled so that
greedy decoding does not collapse onto one token (which would make token comparisons meaningless).
"""
from __future__ import annotations

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


def make_config(architecture: str = "deepseek_v3", base: dict | None = None, **overrides):
    """A DeepseekV2Config / DeepseekV3Config from `base` (default SMALL_V3) with overrides.
    rope_scaling={...} is accepted and passed as the release expects (rope_parameters)."""
    from transformers import DeepseekV2Config, DeepseekV3Config

    values = dict(SMALL_V3 if base is None else base)
    values.update(overrides)
    if architecture == "deepseek_v2":
        values.pop("rope_interleave", None)
        for key in ("n_group", "topk_group"):
            values.pop(key, None)
        cls = DeepseekV2Config
    elif architecture == "deepseek_v3":
        cls = DeepseekV3Config
    else:
        raise ValueError(f"architecture: expected 'deepseek_v2' or 'deepseek_v3', got {architecture!r}")
    rope_scaling = values.pop("rope_scaling", None)
    values.setdefault("pad_token_id", 0)
    values.setdefault("bos_token_id", 1)
    values.setdefault("eos_token_id", None)
    config = cls(**values)
    if rope_scaling is not None:
        parameters = dict(getattr(config, "rope_parameters", None) or {})
        parameters.update(rope_scaling)
        parameters.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
        config.rope_parameters = parameters
        config = cls(**{**config.to_dict(), "rope_parameters": parameters})
    return config


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
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
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
