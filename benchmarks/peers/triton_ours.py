"""hf_flashmla's own Triton kernel (hf_flashmla/triton_decode.py): the portable path that GPUs without the
sm90 kernel take, timed on the same inputs as the CUDA kernel.

Timed the way "ours" is: through the public flash_mla_with_kvcache with first-generation metadata computed
outside the timed call, with HF_FLASHMLA_BACKEND=triton set around each call only (so the other rows keep
their own backend). Variant name "ours-triton".

Tuning runs only: HF_FLASHMLA_TRITON_TILES="16,64,4,3;32,32,4,2" adds one variant per tile config
(block_m, block_n, num_warps, num_stages), named "tiles:16,64,4,3", calling the launcher directly with
that config. The bench's summary takes each impl's fastest correct variant, so with this set the
"triton" summary line is the best of the table's choice and these.
"""
from __future__ import annotations

import contextlib
import os

import torch

NAME = "triton"
VARIANT = "ours-triton"


def available():
    if not torch.cuda.is_available():
        return False, "not run: needs CUDA"
    try:
        import triton

        from hf_flashmla import triton_decode  # noqa: F401  (compiles nothing yet; fails if Triton is broken)
    except Exception as error:  # reported as the peer's error row
        return False, f"hf_flashmla.triton_decode not importable: {error!r}"
    return True, f"triton {triton.__version__}"


def supports(inputs):
    if inputs["q"].device.type != "cuda":
        return False, "needs CUDA"
    return True, ""


@contextlib.contextmanager
def _forced_triton():
    from hf_flashmla.envs import BACKEND
    BACKEND_ENV_VAR = BACKEND.name
    previous = os.environ.get(BACKEND_ENV_VAR)
    os.environ[BACKEND_ENV_VAR] = "triton"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[BACKEND_ENV_VAR]
        else:
            os.environ[BACKEND_ENV_VAR] = previous


def make(inputs):
    import hf_flashmla

    q, k_cache = inputs["q"], inputs["k_cache"]
    h_q, h_kv = q.shape[2], k_cache.shape[2]
    metadata, num_splits = hf_flashmla.get_mla_metadata(inputs["cache_seqlens"], inputs["s_q"] * h_q // h_kv, h_kv)
    with _forced_triton():
        choice = hf_flashmla.backend(q)
    if choice.name != "triton":
        raise RuntimeError(f"backend is {choice.name!r}, not triton: {choice.reason}")
    args = (q, k_cache, inputs["block_table"], inputs["cache_seqlens"], inputs["dv"], metadata, num_splits)
    kwargs = dict(softmax_scale=inputs["softmax_scale"], causal=inputs["causal"])

    def run():
        with _forced_triton():
            return hf_flashmla.flash_mla_with_kvcache(*args, **kwargs)
    return {VARIANT: (run, run), **tile_variants(q, k_cache, inputs)}


def tile_variants(q, k_cache, inputs, **launch_kwargs):
    """One variant per tile config of HF_FLASHMLA_TRITON_TILES (tuning runs only), calling the launcher directly."""
    variants = {}
    for spec in filter(None, os.environ.get("HF_FLASHMLA_TRITON_TILES", "").replace(" ", "").split(";")):
        from hf_flashmla import triton_decode
        block_m, block_n, num_warps, num_stages = (int(v) for v in spec.split(","))
        config = triton_decode.TileConfig(block_m, block_n, num_warps, num_stages, 1 if block_m >= 64 else 2)

        def tuned(config=config):
            return triton_decode.mla_decode_triton(q, k_cache, inputs["block_table"], inputs["cache_seqlens"],
                                                   inputs["dv"], inputs["softmax_scale"], inputs["causal"],
                                                   config=config, **launch_kwargs)
        variants[f"tiles:{spec}"] = (tuned, tuned)
    return variants
