"""hf_flashmla's Triton kernel reading an FP8 latent cache (is_fp8_kvcache; hf_flashmla/fp8_latent.py: 656 bytes per
token instead of 1152): the cache is the config's bf16 cache quantized once, outside the timing, and the call goes
through the public flash_mla_with_kvcache with HF_FLASHMLA_BACKEND=triton set around it (as the "triton" peer does;
on Hopper automatic dispatch takes the sm_90 kernel, the "ours_fp8" peer). Variant name "ours-triton-fp8".

Its errors are measured against the float32 reference of the bf16 cache it was quantized from, so they include the
quantization itself (what the cache costs in accuracy, not kernel rounding): bench_kernel checks them against
LOSSY_TOLERANCES. Timed next to the "triton" peer, the two give the FP8 cache's speedup at equal lengths (the
summary's "our Triton FP8 vs our Triton" line).
"""
from __future__ import annotations

import torch

from benchmarks.peers.triton_ours import _forced_triton, available, tile_variants  # noqa: F401  (the same check)

NAME = "triton_fp8"
VARIANT = "ours-triton-fp8"


def supports(inputs):
    if inputs["q"].device.type != "cuda":
        return False, "needs CUDA"
    if inputs["q"].dtype != torch.bfloat16:
        return False, "the FP8 cache takes bf16 queries"
    return True, ""


def make(inputs):
    import hf_flashmla
    from hf_flashmla import fp8_latent

    q = inputs["q"]
    k_cache = fp8_latent.quantize(inputs["k_cache"], inputs["dv"])
    h_q, h_kv = q.shape[2], k_cache.shape[2]
    with _forced_triton():
        choice = hf_flashmla.backend(q, num_heads_k=h_kv, is_fp8_kvcache=True)
    if choice.name != "triton":
        raise RuntimeError(f"backend is {choice.name!r}, not triton: {choice.reason}")
    metadata, num_splits = hf_flashmla.get_mla_metadata(inputs["cache_seqlens"], inputs["s_q"] * h_q // h_kv, h_kv)
    args = (q, k_cache, inputs["block_table"], inputs["cache_seqlens"], inputs["dv"], metadata, num_splits)
    kwargs = dict(softmax_scale=inputs["softmax_scale"], causal=inputs["causal"], is_fp8_kvcache=True)

    def run():
        with _forced_triton():
            return hf_flashmla.flash_mla_with_kvcache(*args, **kwargs)
    # Tuning runs only, as for the "triton" peer: HF_FLASHMLA_TRITON_TILES adds a variant per tile config.
    return {VARIANT: (run, run), **tile_variants(q, k_cache, inputs, is_fp8_kvcache=True)}
