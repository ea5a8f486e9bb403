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
from hf_flashmla.reference import decode_unchecked


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
        self._key: tuple | None = None  # (q.shape, h_kv, device): what later calls must match
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

    def computed_for(self, q: torch.Tensor, k_cache: torch.Tensor) -> bool:
        """Whether the schedule exists and was computed for these shapes and this device (no error)."""
        return self._key is not None and k_cache.dim() == 4 and self._key == _key_of(q, k_cache)

    def schedule_for(self, q: torch.Tensor, k_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                     compare_values: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(tile_scheduler_metadata, num_splits) for this call: computed at the first call, checked after
        (the class docstring). q and k_cache must have passed the structural checks."""
        key = _key_of(q, k_cache)
        if not self.initialized:
            shapes = _shapes_of(q, k_cache)
            s_q, h_q, h_kv = shapes["s_q"], shapes["h_q"], shapes["h_kv"]
            self.tile_scheduler_metadata, self.num_splits = schedule.compute_schedule(
                cache_seqlens, s_q * h_q // h_kv, h_kv)
            self.shapes, self._key = shapes, key
            self.seqlens = cache_seqlens.clone()
            if not torch.compiler.is_compiling():
                self._seqlens_tensor = cache_seqlens
                self._seqlens_identity = _identity_of(cache_seqlens)
            return self.tile_scheduler_metadata, self.num_splits

        if key != self._key:
            raise ValueError(f"tile_scheduler_metadata: this FlashMLASchedMeta was computed for {self.shapes}, "
                             f"got {_shapes_of(q, k_cache)}; call get_mla_metadata() again for a new batch")
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


def _key_of(q: torch.Tensor, k_cache: torch.Tensor) -> tuple:
    return q.shape, k_cache.shape[2], q.device


def _shapes_of(q: torch.Tensor, k_cache: torch.Tensor) -> dict:
    batch, s_q, h_q, _ = q.shape
    return {"b": batch, "s_q": s_q, "h_q": h_q, "h_kv": k_cache.shape[2], "device": q.device}


def _identity_of(tensor: torch.Tensor) -> tuple:
    """Memory, shape and version counter; inference tensors (torch.inference_mode) have no version counter."""
    version = None if tensor.is_inference() else tensor._version
    return tensor.data_ptr(), tuple(tensor.shape), version


def get_mla_metadata(cache_seqlens: torch.Tensor | None = None, num_q_tokens_per_head_k: int | None = None,
                     num_heads_k: int | None = None, *, check_values: bool | None = None):
    """First generation: get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv) returns
    (tile_scheduler_metadata int32 [num_sm_parts, 8], num_splits int32 [b + 1]) on cache_seqlens'
    device, without a host sync (see hf_flashmla.schedule for the format).
    Newest generation: get_mla_metadata() returns (FlashMLASchedMeta(), None).
    check_values: also check that the lengths are >= 0 (always on CPU; on CUDA, where it costs a sync, when
    check_values is True, default HF_FLASHMLA_CHECK_VALUES=1), as flash_mla_with_kvcache does."""
    if cache_seqlens is None and num_q_tokens_per_head_k is None and num_heads_k is None:
        return FlashMLASchedMeta(), None
    if num_q_tokens_per_head_k is None or num_heads_k is None:
        missing = "num_q_tokens_per_head_k" if num_q_tokens_per_head_k is None else "num_heads_k"
        raise TypeError(f"{missing}: expected an int (first generation: get_mla_metadata(cache_seqlens, "
                        f"s_q * h_q // h_kv, h_kv); newest generation: get_mla_metadata() with no arguments)")
    validation.check_metadata_args(cache_seqlens, num_q_tokens_per_head_k, num_heads_k)
    if _value_checks_requested(check_values) or cache_seqlens.device.type == "cpu":
        validation.check_metadata_lengths(cache_seqlens)
    return schedule.compute_schedule(cache_seqlens, num_q_tokens_per_head_k, num_heads_k)


def _check_schedule_values(tile_scheduler_metadata, num_splits, cache_seqlens, num_q_tokens_per_head_k: int,
                           num_heads_k: int) -> None:
    """The metadata equals the schedule of this cache_seqlens (same number of SM parts).
    Reads tensor values: a device->host sync on CUDA."""
    num_parts = tile_scheduler_metadata.shape[0]
    num_m_blocks = -(-num_q_tokens_per_head_k // schedule.ROWS_PER_TILE)
    # compute_schedule derives the part count from an SM count; this one reproduces num_parts.
    expected_metadata, expected_splits = schedule.compute_schedule(
        cache_seqlens, num_q_tokens_per_head_k, num_heads_k, num_sms=num_parts * num_heads_k * num_m_blocks)
    if not torch.equal(num_splits, expected_splits):
        raise ValueError("num_splits: does not match this cache_seqlens; was the metadata computed for another "
                         "batch? Call get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv) again")
    if not torch.equal(tile_scheduler_metadata, expected_metadata):
        raise ValueError("tile_scheduler_metadata: does not match this cache_seqlens; was it computed for "
                         "another batch? Call get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv) again")


def _value_checks_requested(check_values: bool | None) -> bool:
    if check_values is None:
        return envs.check_values_requested(envs.CHECK_VALUES.raw())
    if not isinstance(check_values, bool):
        raise TypeError(f"check_values: expected a bool or None, got {validation.type_name(check_values)}")
    return check_values


def flash_mla_with_kvcache(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor,
                           cache_seqlens: torch.Tensor, head_dim_v: int, tile_scheduler_metadata,
                           num_splits: torch.Tensor | None, softmax_scale: float | None = None,
                           causal: bool = False, is_fp8_kvcache: bool = False, *, check_values: bool | None = None):
    """Paged MLA decoding attention.

    q [b, s_q, h_q, 576]; k_cache [num_blocks, 64, h_kv, 576]; block_table int32 [b, max_blocks];
    cache_seqlens int32 [b]; head_dim_v = 512 (V is the first 512 values of K); bf16 or fp16
    (float32 is accepted on the reference path). tile_scheduler_metadata / num_splits come from
    get_mla_metadata (either generation). softmax_scale defaults to 576 ** -0.5.
    With causal, query token t of a sequence of length L sees keys 0 .. L - s_q + t.
    Returns out [b, s_q, h_q, 512] in q's dtype and lse float32 [b, h_q, s_q]; a query that sees no
    key gets out = 0, lse = +inf. Nothing in k_cache past a sequence's length reaches its output; NaN in q
    or in a visible key propagates. hf_flashmla.backend(q.device, num_heads_k=h_kv, is_fp8_kvcache=...) says which
    path runs.

    is_fp8_kvcache (FlashMLA's newest API): k_cache holds FlashMLA's FP8 layout, uint8 or float8_e4m3fn
    [num_blocks, 64, h_kv, 656] (per token: 512 e4m3 latent values, 4 float32 scales, one per 128 of them, 64 bf16
    rope values; hf_flashmla.fp8_latent.quantize writes it). q is bf16 (float32 on the reference path), out is
    in q's dtype. Served by the sm_90 kernel on Hopper (it dequantizes each page in shared memory), the Triton
    kernel on other CUDA GPUs, the reference on the CPU.

    check_values: also run the checks that read tensor values (cache_seqlens range, block ids of the
    pages in use, metadata computed for this batch). They always run on CPU; on CUDA they cost a
    device->host sync, so they run only when check_values is True (default: HF_FLASHMLA_CHECK_VALUES=1).
    Structural problems (shapes, dtypes, layouts, devices) always raise TypeError or ValueError naming the
    argument: on the sm_90 kernel's path the op checks them in C++ (csrc/mla_checks.h), elsewhere
    hf_flashmla/validation.py does, with the same messages.
    """
    for name, value in (("q", q), ("k_cache", k_cache), ("block_table", block_table),
                        ("cache_seqlens", cache_seqlens)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {validation.type_name(value)}")
    device = q.device
    validation.require_data("q", q)
    validation.check_scalars(head_dim_v, causal, is_fp8_kvcache)
    choice = dispatch.choice_for(device, k_cache.shape[2] if k_cache.dim() == 4 else 1, is_fp8_kvcache)
    read_values = _value_checks_requested(check_values) or device.type == "cpu"
    scale = validation.softmax_scale_or_default(softmax_scale)
    newest = isinstance(tile_scheduler_metadata, FlashMLASchedMeta)
    if newest and num_splits is not None:
        raise ValueError("num_splits: expected None with a FlashMLASchedMeta (newest generation), got "
                         f"{validation.type_name(num_splits)}")

    if choice.name == dispatch.KERNEL and not read_values:
        # The hot path: the op checks the structure itself, in C++; nothing reads values (no sync).
        if not newest:
            if not isinstance(tile_scheduler_metadata, torch.Tensor) or not isinstance(num_splits, torch.Tensor):
                validation.check_schedule_tensors(tile_scheduler_metadata, num_splits, 0, q.device)  # raises
            return _ops.mla_decode(q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                                   scale, causal, head_dim_v, is_fp8_kvcache=is_fp8_kvcache)
        if not tile_scheduler_metadata.computed_for(q, k_cache):
            # Once per batch state (or on a mismatch, to name what is wrong): the schedule needs a sound q.
            validation.check_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, scale, causal,
                                    for_kernel=True, is_fp8_kvcache=is_fp8_kvcache)
        metadata, splits = tile_scheduler_metadata.schedule_for(q, k_cache, cache_seqlens, compare_values=False)
        return _ops.mla_decode(q, k_cache, block_table, cache_seqlens, metadata, splits, scale, causal, head_dim_v,
                               tile_scheduler_metadata.seqlens, is_fp8_kvcache=is_fp8_kvcache)

    for_kernel = choice.name == dispatch.KERNEL
    validation.check_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, scale, causal,
                            for_kernel=for_kernel, is_fp8_kvcache=is_fp8_kvcache)
    if read_values:
        validation.check_cache_values(k_cache, block_table, cache_seqlens)
    batch, s_q, h_q, _ = q.shape
    h_kv = k_cache.shape[2]
    if newest:
        metadata, splits = tile_scheduler_metadata.schedule_for(q, k_cache, cache_seqlens, read_values)
        schedule_seqlens = tile_scheduler_metadata.seqlens
    else:
        schedule_seqlens = None
        validation.check_schedule_tensors(tile_scheduler_metadata, num_splits, batch, q.device)
        metadata, splits = tile_scheduler_metadata, num_splits
        if read_values:
            _check_schedule_values(metadata, splits, cache_seqlens, s_q * h_q // h_kv, h_kv)

    if for_kernel:
        return _ops.mla_decode(q, k_cache, block_table, cache_seqlens, metadata, splits, scale, causal, head_dim_v,
                               schedule_seqlens, is_fp8_kvcache=is_fp8_kvcache)
    if choice.name == dispatch.TRITON:
        from hf_flashmla import triton_decode  # imported on first use: Triton is optional and slow to import
        return triton_decode.decode_on_device(q, k_cache, block_table, cache_seqlens, head_dim_v, scale, causal,
                                              is_fp8_kvcache)
    return decode_unchecked(q, k_cache, block_table, cache_seqlens, head_dim_v, scale, causal, is_fp8_kvcache)
