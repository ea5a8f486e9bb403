"""FlashMLA-compatible public API: get_mla_metadata and flash_mla_with_kvcache.

Both generations of FlashMLA's calling convention are accepted unchanged:

  first generation (explicit schedule tensors):
    tile_scheduler_metadata, num_splits = get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512,
                                      tile_scheduler_metadata, num_splits, causal=True)
  newest generation (schedule computed lazily and cached):
    sched_meta, _ = get_mla_metadata()
    out, lse = flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, sched_meta, None,
                                      causal=True)
"""
from __future__ import annotations

import torch

from hf_flashmla import _ops, dispatch, envs, schedule, validation
from hf_flashmla.reference import mla_decode_reference


class FlashMLASchedMeta:
    """Newest-generation schedule holder: empty until the first flash_mla_with_kvcache call, which
    computes the schedule and records what it was computed for. Later calls must pass the same
    shapes (b, s_q, h_q, h_kv), the same device and the same cache_seqlens. Use one FlashMLASchedMeta
    per batch state, e.g. one per decoding step shared by all layers.

    The first call keeps a copy of cache_seqlens (on its device, no sync). A later call's
    cache_seqlens is checked, most thorough first:
      - by value against that copy, raising ValueError, on CPU and wherever value checks are on
        (check_values=True or HF_FLASHMLA_CHECK_VALUES=1; on CUDA this costs a sync);
      - otherwise by identity, raising ValueError: the same memory and shape, and, where the tensor
        has a version counter, no in-place write through PyTorch since. Inference tensors
        (torch.inference_mode) have none, and torch.compile cannot trace this check, so it is
        skipped there;
      - always on the sm_90 kernel, on the device: the kernel compares each sequence's length with
        the copy and writes NaN out and lse for a sequence whose length changed (writes through
        raw kernels or CUDA graph replays included), without a sync.
    """

    def __init__(self):
        self.tile_scheduler_metadata: torch.Tensor | None = None
        self.num_splits: torch.Tensor | None = None
        self.shapes: dict | None = None
        self.seqlens: torch.Tensor | None = None  # the copy of cache_seqlens the schedule was computed for
        # The caller's tensor: kept so that its memory is not handed to another tensor while this is in use.
        self._seqlens_tensor: torch.Tensor | None = None
        self._seqlens_identity: tuple | None = None

    @property
    def initialized(self) -> bool:
        return self.tile_scheduler_metadata is not None

    def __repr__(self):
        if not self.initialized:
            return "FlashMLASchedMeta(not yet computed)"
        return (f"FlashMLASchedMeta({self.shapes}, num_sm_parts={self.tile_scheduler_metadata.shape[0]})")

    def schedule_for(self, q: torch.Tensor, k_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                     compare_values: bool) -> tuple[torch.Tensor, torch.Tensor]:
        batch, s_q, h_q, _ = q.shape
        h_kv = k_cache.shape[2]
        shapes = {"b": batch, "s_q": s_q, "h_q": h_q, "h_kv": h_kv, "device": q.device}
        if not self.initialized:
            self.tile_scheduler_metadata, self.num_splits = schedule.compute_schedule(
                cache_seqlens, s_q * h_q // h_kv, h_kv)
            self.shapes = shapes
            self.seqlens = cache_seqlens.clone()
            if not torch.compiler.is_compiling():
                self._seqlens_tensor = cache_seqlens
                self._seqlens_identity = _identity_of(cache_seqlens)
            return self.tile_scheduler_metadata, self.num_splits

        if shapes != self.shapes:
            raise ValueError(f"tile_scheduler_metadata: this FlashMLASchedMeta was computed for {self.shapes}, "
                             f"got {shapes}; call get_mla_metadata() again for a new batch")
        if compare_values:
            if not torch.equal(self.seqlens, cache_seqlens):
                raise ValueError("cache_seqlens: differs from the values this FlashMLASchedMeta was computed for; "
                                 "call get_mla_metadata() again for a new batch")
        elif not torch.compiler.is_compiling() and self._seqlens_identity is not None:
            if _identity_of(cache_seqlens) != self._seqlens_identity:
                raise ValueError("cache_seqlens: differs from the tensor this FlashMLASchedMeta was computed for "
                                 "(compared by identity and version; pass check_values=True to compare values); "
                                 "call get_mla_metadata() again for a new batch")
        return self.tile_scheduler_metadata, self.num_splits


def _identity_of(tensor: torch.Tensor) -> tuple:
    """Memory, shape and version counter; inference tensors (torch.inference_mode) have no version counter."""
    version = None if tensor.is_inference() else tensor._version
    return tensor.data_ptr(), tuple(tensor.shape), version


def get_mla_metadata(cache_seqlens: torch.Tensor | None = None, num_q_tokens_per_head_k: int | None = None,
                     num_heads_k: int | None = None):
    """First generation: get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv) returns
    (tile_scheduler_metadata int32 [num_sm_parts, 8], num_splits int32 [b + 1]) on cache_seqlens'
    device, without a host sync (see hf_flashmla.schedule for the format).
    Newest generation: get_mla_metadata() returns (FlashMLASchedMeta(), None)."""
    if cache_seqlens is None and num_q_tokens_per_head_k is None and num_heads_k is None:
        return FlashMLASchedMeta(), None
    if num_q_tokens_per_head_k is None or num_heads_k is None:
        missing = "num_q_tokens_per_head_k" if num_q_tokens_per_head_k is None else "num_heads_k"
        raise TypeError(f"{missing}: expected an int (first generation: get_mla_metadata(cache_seqlens, "
                        f"s_q * h_q // h_kv, h_kv); newest generation: get_mla_metadata() with no arguments)")
    validation.check_metadata_args(cache_seqlens, num_q_tokens_per_head_k, num_heads_k)
    return schedule.compute_schedule(cache_seqlens, num_q_tokens_per_head_k, num_heads_k)


def _value_checks_requested(check_values: bool | None) -> bool:
    if check_values is None:
        return envs.check_values_requested(envs.CHECK_VALUES.raw())
    if not isinstance(check_values, bool):
        raise TypeError(f"check_values: expected a bool or None, got {type(check_values).__name__}")
    return check_values


def flash_mla_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor,
                           cache_seqlens: torch.Tensor, head_dim_v: int, tile_scheduler_metadata,
                           num_splits: torch.Tensor | None, softmax_scale: float | None = None,
                           causal: bool = False, *, check_values: bool | None = None):
    """Paged MLA decoding attention.

    q [b, s_q, h_q, 576]; k_cache [num_blocks, 64, h_kv, 576]; block_table int32 [b, max_blocks];
    cache_seqlens int32 [b]; head_dim_v = 512 (V is the first 512 values of K); bf16 or fp16
    (float32 is accepted on the reference path). tile_scheduler_metadata / num_splits come from
    get_mla_metadata (either generation). softmax_scale defaults to 576 ** -0.5.
    With causal, query token t of a sequence of length L sees keys 0 .. L - s_q + t.
    Returns out [b, s_q, h_q, 512] in q's dtype and lse float32 [b, h_q, s_q]; a query that sees no
    key gets out = 0, lse = +inf. Nothing in k_cache past a sequence's length reaches its output; NaN in q
    or in a visible key propagates. hf_flashmla.backend(q.device, num_heads_k=h_kv) says which path runs.

    check_values: also run the checks that read tensor values (cache_seqlens range, block ids of the
    pages in use, metadata computed for this batch). They always run on CPU; on CUDA they cost a
    device->host sync, so they run only when check_values is True (default: HF_FLASHMLA_CHECK_VALUES=1).
    """
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q: expected a torch.Tensor, got {type(q).__name__}")
    if not isinstance(k_cache, torch.Tensor):
        raise TypeError(f"k_cache: expected a torch.Tensor, got {type(k_cache).__name__}")
    choice = dispatch.choice_for(q.device, k_cache.shape[2] if k_cache.dim() == 4 else 1)
    for_kernel = choice.name == dispatch.KERNEL
    validation.check_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                            for_kernel=for_kernel)
    read_values = _value_checks_requested(check_values) or q.device.type == "cpu"
    if read_values:
        validation.check_cache_values(k_cache, block_table, cache_seqlens)

    batch, s_q, h_q, head_dim = q.shape
    h_kv = k_cache.shape[2]
    if isinstance(tile_scheduler_metadata, FlashMLASchedMeta):
        if num_splits is not None:
            raise ValueError("num_splits: expected None with a FlashMLASchedMeta (newest generation), got "
                             f"{type(num_splits).__name__}")
        metadata, splits = tile_scheduler_metadata.schedule_for(q, k_cache, cache_seqlens, read_values)
        schedule_seqlens = tile_scheduler_metadata.seqlens
    else:
        schedule_seqlens = None
        validation.check_schedule_tensors(tile_scheduler_metadata, num_splits, batch, q.device)
        metadata, splits = tile_scheduler_metadata, num_splits
        if read_values:
            validation.check_schedule_values(metadata, splits, cache_seqlens, s_q * h_q // h_kv, h_kv)

    if softmax_scale is None:
        softmax_scale = head_dim ** -0.5
    if for_kernel:
        return _ops.mla_decode(q, k_cache, block_table, cache_seqlens, metadata, splits, float(softmax_scale),
                               causal, head_dim_v, schedule_seqlens)
    if choice.name == dispatch.TRITON:
        from hf_flashmla import triton_decode  # imported on first use: Triton is optional and slow to import
        if q.device.type != "cuda":  # TRITON_INTERPRET on the CPU
            return triton_decode.mla_decode_triton(q, k_cache, block_table, cache_seqlens, head_dim_v,
                                                   float(softmax_scale), causal)
        # Triton launches on the current device and stream: make them q's (device_map puts layers on several GPUs).
        with torch.cuda.device(q.device):
            return triton_decode.mla_decode_triton(q, k_cache, block_table, cache_seqlens, head_dim_v,
                                                   float(softmax_scale), causal)
    return mla_decode_reference(q, k_cache, block_table, cache_seqlens, head_dim_v, float(softmax_scale), causal)
