"""hf_flashmla's sm_90 kernel reading an FP8 latent cache (is_fp8_kvcache; hf_flashmla/fp8_latent.py: 656 bytes per
token instead of 1152; the page feed of csrc/mla_decode_fp8_feed.cuh): the cache is the config's bf16 cache quantized
once, outside the timing, and the call goes through the public flash_mla_with_kvcache in automatic dispatch, with
first-generation metadata computed outside the timed call, as "ours" is timed. Variant name "ours-fp8".

Its errors are measured against the float32 reference of the bf16 cache it was quantized from, so they include the
quantization (bench_kernel checks them against LOSSY_TOLERANCES). Timed next to "ours", the two give the FP8 cache's
speedup at equal lengths (the summary's "ours FP8 vs ours" line).
"""
from __future__ import annotations

import torch

NAME = "ours_fp8"
VARIANT = "ours-fp8"


def available():
    import hf_flashmla
    from hf_flashmla import _ops

    if not torch.cuda.is_available():
        return False, "not run: needs CUDA"
    if not _ops.fp8_kernel_available():
        return False, "not run: the CUDA extension is not built with the FP8 feed"
    choice = hf_flashmla.backend(torch.device("cuda"), is_fp8_kvcache=True)
    if choice.name != "cuda_sm90":
        return False, f"not run: {choice.reason}"
    return True, "sm_90 kernel (narrow kernel for s_q * h_q <= 32, else the FP8 feed)"


def supports(inputs):
    if inputs["q"].dtype != torch.bfloat16:
        return False, "the FP8 cache takes bf16 queries"
    if inputs["k_cache"].shape[2] != 1:
        return False, "the sm_90 kernel serves h_kv = 1"
    return True, ""


def make(inputs):
    import hf_flashmla
    from hf_flashmla import fp8_latent

    q = inputs["q"]
    k_cache = fp8_latent.quantize(inputs["k_cache"], inputs["dv"])
    h_q = q.shape[2]
    metadata, num_splits = hf_flashmla.get_mla_metadata(inputs["cache_seqlens"], inputs["s_q"] * h_q, 1)
    args = (q, k_cache, inputs["block_table"], inputs["cache_seqlens"], inputs["dv"], metadata, num_splits)
    kwargs = dict(softmax_scale=inputs["softmax_scale"], causal=inputs["causal"], is_fp8_kvcache=True)

    def run():
        return hf_flashmla.flash_mla_with_kvcache(*args, **kwargs)
    return {VARIANT: (run, run)}
