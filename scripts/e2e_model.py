"""Random-weight DeepSeek-V3-architecture models built in memory (no downloads), for benchmarks and checks.

Presets:
- "deepseek-v3": DeepSeek-V3's attention shapes (hidden 7168, 128 heads, q_lora_rank 1536, kv_lora_rank 512,
  qk_nope 128, qk_rope 64, v_head 128) with a dense MLP of 4096 and a 4096-token vocabulary, truncated to a
  few layers: the end-to-end protocol of BENCHMARKS.md.
- "tiny": the same latent layout (kv_lora_rank 512 + rope 64 = the 576 values the MLA kernel reads) with
  every other dimension small, so that it runs on a CPU in well under a second per step.

Every layer is dense (first_k_dense_replace = num_hidden_layers): the routed experts would dominate memory
and time without telling anything about attention. Only this module knows the presets, so the benchmark,
the evaluation script and tests build identical models from one name.
"""
from __future__ import annotations

import json
import os

import torch

PRESETS = {
    "deepseek-v3": dict(
        hidden_size=7168, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, intermediate_size=4096, vocab_size=4096,
        num_hidden_layers=2,
    ),
    "tiny": dict(
        hidden_size=64, num_attention_heads=4, q_lora_rank=32, kv_lora_rank=512,
        qk_nope_head_dim=16, qk_rope_head_dim=64, v_head_dim=16, intermediate_size=64, vocab_size=256,
        num_hidden_layers=2,
    ),
}

# The random model must not stop early, and padding needs an id: no EOS, pad = 0.
_GENERATION_IDS = dict(bos_token_id=None, eos_token_id=None, pad_token_id=0)


def deepseek_v3_config(preset: str = "deepseek-v3", max_positions: int = 163840, **overrides):
    """A DeepseekV3Config with every layer dense; `overrides` replace preset fields (e.g. num_hidden_layers)."""
    from transformers import DeepseekV3Config

    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    fields = dict(PRESETS[preset])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    layers = fields["num_hidden_layers"]
    fields["num_key_value_heads"] = fields["num_attention_heads"]
    return DeepseekV3Config(
        **fields,
        first_k_dense_replace=layers,  # all layers dense: no routed experts are built
        n_routed_experts=8, n_group=1, topk_group=1, num_experts_per_tok=2, moe_intermediate_size=64,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        **_GENERATION_IDS,
    )


def build_random_model(config, dtype=torch.bfloat16, device="cpu", attn_implementation="eager", seed=0):
    """The causal LM of `config` with its default random init, allocated directly on `device` in `dtype`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.eval().requires_grad_(False)
    _clear_generation_ids(model)
    return model


def _clear_generation_ids(model):
    for name, value in _GENERATION_IDS.items():
        setattr(model.generation_config, name, value)


def save_random_checkpoint(path, preset="tiny", dtype=torch.float32, seed=0, **overrides):
    """Writes a from_pretrained-loadable checkpoint (safetensors) of a random model; returns `path`.

    An existing checkpoint at `path` made by this function with the same recipe is kept as it is."""
    recipe = {"preset": preset, "dtype": str(dtype), "seed": seed, "overrides": overrides}
    marker = os.path.join(path, "random_recipe.json")
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == recipe:
                return path
    config = deepseek_v3_config(preset, max_positions=4096, **overrides)
    model = build_random_model(config, dtype=dtype, device="cpu", seed=seed)
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    with open(marker, "w") as f:
        json.dump(recipe, f)
    return path


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def describe(config) -> dict:
    """The dimensions a reader of a benchmark needs, as plain JSON values."""
    keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "q_lora_rank", "kv_lora_rank",
            "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size", "vocab_size")
    return {k: getattr(config, k) for k in keys}
