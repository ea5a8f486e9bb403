"""Loads the compiled extension (if built) and gives its custom ops fake implementations.

The extension registers, in the `hf_flashmla` torch.library namespace:
  mla_decode(Tensor q, Tensor k_cache, Tensor block_table, Tensor cache_seqlens,
             Tensor tile_scheduler_metadata, Tensor num_splits, float softmax_scale, bool causal,
             int head_dim_v, Tensor? schedule_seqlens=None, bool is_fp8_kvcache=False) -> (Tensor out, Tensor lse)
    q [b, s_q, h_q, 576], k_cache [num_blocks, 64, 1, 576] (bf16 or fp16, contiguous), or with is_fp8_kvcache
    uint8 / float8_e4m3fn [num_blocks, 64, 1, 656] (FlashMLA's FP8 layout, hf_flashmla.fp8_latent) and q bf16,
    block_table int32 [b, max_blocks], cache_seqlens int32 [b], metadata from hf_flashmla.schedule.
    schedule_seqlens: the lengths the metadata was computed for, where they may differ from
    cache_seqlens (newest API): the kernel keeps to them, and a sequence whose length differs gets NaN.
    out [b, s_q, h_q, head_dim_v] (q's dtype), lse float32 [b, h_q, s_q].
  mla_metadata(Tensor cache_seqlens, int num_sm_parts, int page_size, int sequence_overhead_pages,
               int split_combine_pages, int min_piece_pages)
             -> (Tensor tile_scheduler_metadata, Tensor num_splits)
    the split-KV schedule of hf_flashmla.schedule (int32 [num_sm_parts, 8] and int32 [b + 1]) from one
    single-CTA kernel (csrc/mla_metadata_kernel.cu); cache_seqlens int32 [b], any stride.
  fp8_latent_write(Tensor(a!) pool, Tensor slots, Tensor latent) -> ()
    latent rows [n, 576] (bf16, fp16 or float32) quantized into FlashMLA's FP8 layout and stored in the uint8 pool
    rows [num_rows, 656] at slots (int64 [n]; rows outside the pool are skipped), byte for byte
    hf_flashmla.fp8_latent.quantize, in one kernel (csrc/fp8_latent_write.cu).
A bad input makes any of them raise RuntimeError("ValueError: <argument>: ..." or "TypeError: ..."), see
csrc/mla_checks.h; the wrappers below raise that ValueError / TypeError instead (for mla_decode and mla_metadata
with the message that hf_flashmla/validation.py gives for the same input).
The fake (meta) implementations let torch.compile trace calls without running the kernels; mla_decode's runs
the structural checks the op runs in C++ (hf_flashmla/validation.py's, the same messages), so that a compiled
call rejects bad inputs while it is traced.
"""
from __future__ import annotations

import torch

from hf_flashmla import validation

try:
    from hf_flashmla import _C  # noqa: F401  (registers torch.ops.hf_flashmla.*)
    EXTENSION_ERROR: str | None = None
except ImportError as error:  # CPU-only installs have no compiled extension
    _C = None
    EXTENSION_ERROR = str(error)


def extension_available() -> bool:
    return _C is not None


def fp8_kernel_available() -> bool:
    """The decode op reads FP8 caches (an extension built before the FP8 feed existed does not)."""
    return _C is not None and "is_fp8_kvcache" in str(torch.ops.hf_flashmla.mla_decode.default._schema)


def fp8_write_kernel_available() -> bool:
    """The FP8 cache's fused write is in the built extension (an extension built before it existed lacks it)."""
    return _C is not None and hasattr(torch.ops.hf_flashmla, "fp8_latent_write")


def metadata_kernel_available() -> bool:
    """The schedule kernel is in the built extension (an extension built before it existed lacks it)."""
    return _C is not None and hasattr(torch.ops.hf_flashmla, "mla_metadata")


if _C is not None:
    @torch.library.register_fake("hf_flashmla::mla_decode")
    def _mla_decode_fake(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                         softmax_scale, causal, head_dim_v, schedule_seqlens=None, is_fp8_kvcache=False):
        validation.check_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                                for_kernel=True, is_fp8_kvcache=is_fp8_kvcache)
        validation.check_schedule_tensors(tile_scheduler_metadata, num_splits, q.shape[0], q.device)
        batch, s_q, h_q, _ = q.shape
        out = q.new_empty((batch, s_q, h_q, head_dim_v))
        lse = q.new_empty((batch, h_q, s_q), dtype=torch.float32)
        return out, lse


_CHECK_ERRORS = {"ValueError: ": ValueError, "TypeError: ": TypeError}


def check_error(error: RuntimeError) -> Exception:
    """The exception an op's failed input check stands for (its message's prefix names it), else `error`."""
    message = str(error)
    for prefix, error_type in _CHECK_ERRORS.items():
        if message.startswith(prefix):
            return error_type(message[len(prefix):])
    return error


def mla_decode(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
               softmax_scale: float, causal: bool, head_dim_v: int, schedule_seqlens=None, is_fp8_kvcache=False):
    try:
        # A bf16/fp16 call leaves is_fp8_kvcache out: an extension built before the FP8 feed has no such argument.
        if is_fp8_kvcache:
            return torch.ops.hf_flashmla.mla_decode(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata,
                                                    num_splits, softmax_scale, causal, head_dim_v, schedule_seqlens,
                                                    True)
        return torch.ops.hf_flashmla.mla_decode(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata,
                                                num_splits, softmax_scale, causal, head_dim_v, schedule_seqlens)
    except RuntimeError as error:
        raise check_error(error) from None


if metadata_kernel_available():
    @torch.library.register_fake("hf_flashmla::mla_metadata")
    def _mla_metadata_fake(cache_seqlens, num_sm_parts, page_size, sequence_overhead_pages, split_combine_pages,
                           min_piece_pages):
        metadata = cache_seqlens.new_empty((num_sm_parts, 8), dtype=torch.int32)
        num_splits = cache_seqlens.new_empty((cache_seqlens.shape[0] + 1,), dtype=torch.int32)
        return metadata, num_splits


def mla_metadata(cache_seqlens, num_sm_parts: int, page_size: int, sequence_overhead_pages: int,
                 split_combine_pages: int, min_piece_pages: int):
    try:
        return torch.ops.hf_flashmla.mla_metadata(cache_seqlens, num_sm_parts, page_size, sequence_overhead_pages,
                                                  split_combine_pages, min_piece_pages)
    except RuntimeError as error:
        raise check_error(error) from None


if fp8_write_kernel_available():
    @torch.library.register_fake("hf_flashmla::fp8_latent_write")
    def _fp8_latent_write_fake(pool, slots, latent):
        return None


def fp8_latent_write(pool, slots, latent) -> None:
    try:
        torch.ops.hf_flashmla.fp8_latent_write(pool, slots, latent)
    except RuntimeError as error:
        raise check_error(error) from None
