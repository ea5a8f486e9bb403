"""Input checks for the public API. Each failure raises TypeError (wrong kind of object or dtype) or
ValueError (wrong shape, device, layout or value) whose message starts with the argument's name and
says what was expected. The sm_90 op runs the structural checks of its own inputs in C++
(csrc/mla_checks.h), with the same messages, so that its hot path skips these (tests/test_csrc_checks.py
compares the two).

Structural checks (check_inputs, check_schedule_tensors, check_metadata_args) read only shapes,
dtypes, strides and devices: they never synchronise with the GPU.
Value checks (check_cache_values, check_metadata_lengths; interface.py's schedule comparison) read tensor
contents; on CUDA tensors that
costs a device->host sync, so flash_mla_with_kvcache runs them on CUDA only when asked
(check_values=True or HF_FLASHMLA_CHECK_VALUES=1, hf_flashmla/envs.py). On CPU tensors they always run.
"""
from __future__ import annotations

import math
import numbers

import torch

from hf_flashmla import fp8_latent

HEAD_DIM = 576
HEAD_DIM_V = 512
# As in hf_flashmla/schedule.py, which this module does not import: hf_flashmla._ops's fake implementations use
# these checks, and schedule.py imports _ops.
PAGE_SIZE = 64
METADATA_WIDTH = 8
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
REFERENCE_DTYPES = KERNEL_DTYPES + (torch.float32,)
# FP8 cache (fp8_latent): FlashMLA's FP8 kernels take bf16 queries; float32 q is the reference's (and Triton's) own.
FP8_Q_DTYPES = (torch.bfloat16, torch.float32)
FP8_TOKEN_BYTES = fp8_latent.token_bytes(HEAD_DIM_V, HEAD_DIM - HEAD_DIM_V)
# The sm_90 kernel's own limits: its combine grid has a row per sequence and its decode grid a row per schedule part
# (CUDA's grid rows: at most 65535), and TMA reads q and k_cache from 16-byte aligned addresses (csrc/mla_checks.h
# checks the same).
KERNEL_MAX_GRID_ROWS = 65535
TMA_ALIGNMENT = 16
KERNEL_NUM_KV_HEADS = 1  # the compiled op's contract (see hf_flashmla/_ops.py); dispatch.py sends other h_kv elsewhere
FLOAT32_MAX = torch.finfo(torch.float32).max  # every path scales scores in float32
INT32_MAX = 2 ** 31 - 1  # the op's int arguments (FlashMLA's C++ API takes int)


def type_name(value) -> str:
    """The type of value as a message names it: builtins by their name, others qualified (numpy's bool is
    `numpy.bool`, not `bool`)."""
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _misalignment(tensor) -> int:
    """Bytes past a 16-byte boundary where the tensor's data starts (0 where there is no address: meta and fake
    tensors, and while torch.compile traces, where data_ptr() breaks the graph; the op's C++ checks the same at run
    time, csrc/mla_checks.h)."""
    if torch.compiler.is_compiling():
        return 0
    try:
        return tensor.data_ptr() % TMA_ALIGNMENT
    except (RuntimeError, NotImplementedError):
        return 0


def _require_aligned(name, tensor):
    offset = _misalignment(tensor)
    if offset:
        raise ValueError(f"{name}: expected data aligned to {TMA_ALIGNMENT} bytes (the kernel reads it with TMA), got "
                         f"a view starting {offset} bytes past such a boundary; call {name}.clone()")


def _require_tensor(name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type_name(value)}")


def require_data(name, tensor):
    """A tensor with data: the meta device has shapes alone (torch.compile's fake tensors name real devices)."""
    if tensor.device.type == "meta":
        raise ValueError(f"{name}: expected a tensor with data (cpu or cuda), got one on the meta device")


def _require_rank(name, tensor, rank, layout):
    if tensor.dim() != rank:
        raise ValueError(f"{name}: expected a rank-{rank} tensor {layout}, got shape {tuple(tensor.shape)}")


def _require_dtype(name, tensor, dtypes, why=""):
    if tensor.dtype not in dtypes:
        allowed = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype {allowed}{why}, got {str(tensor.dtype).replace('torch.', '')}")


def _require_device(name, tensor, device):
    if tensor.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of q), got one on {tensor.device}")


def _require_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type_name(value)}")


def softmax_scale_or_default(softmax_scale) -> float:
    """softmax_scale as a float, 576 ** -0.5 for None; TypeError / ValueError for anything but a finite
    positive number."""
    if softmax_scale is None:
        return HEAD_DIM ** -0.5
    if type(softmax_scale) is float and 0 < softmax_scale <= FLOAT32_MAX:  # the common case, without the ABC check
        return softmax_scale
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise TypeError(f"softmax_scale: expected a float or None, got {type_name(softmax_scale)}")
    if not math.isfinite(softmax_scale) or softmax_scale <= 0:
        # <= 0 is no attention softmax; the kernel's masked keys (-inf) times 0 would give NaN, and its running
        # row max assumes scaled scores grow with raw ones.
        raise ValueError(f"softmax_scale: expected a finite positive float, got {softmax_scale}")
    if softmax_scale > FLOAT32_MAX:  # would be inf in float32, where every path applies it
        raise ValueError(f"softmax_scale: expected a float32-representable value (at most {FLOAT32_MAX:.4g}), got "
                         f"{softmax_scale}")
    return float(softmax_scale)


def check_scalars(head_dim_v, causal, is_fp8_kvcache=False) -> None:
    """The types of flash_mla_with_kvcache's scalar arguments (their values are checked with the tensors)."""
    if type(head_dim_v) is not int:  # the common case skips the numbers.Integral check
        _require_int("head_dim_v", head_dim_v)
    if type(causal) is not bool:
        raise TypeError(f"causal: expected a bool, got {type_name(causal)}")
    if type(is_fp8_kvcache) is not bool:
        raise TypeError(f"is_fp8_kvcache: expected a bool, got {type_name(is_fp8_kvcache)}")


def _check_table_and_lengths(block_table, cache_seqlens, batch: int, device) -> None:
    """block_table int32 [batch, max_blocks] and cache_seqlens int32 [batch] on q's device."""
    _require_rank("block_table", block_table, 2, "[batch, max_blocks_per_seq]")
    _require_device("block_table", block_table, device)
    _require_dtype("block_table", block_table, (torch.int32,))
    if block_table.shape[0] != batch:
        raise ValueError(f"block_table: expected {batch} rows (the batch size of q), got shape "
                         f"{tuple(block_table.shape)}")
    _require_rank("cache_seqlens", cache_seqlens, 1, "[batch]")
    _require_device("cache_seqlens", cache_seqlens, device)
    _require_dtype("cache_seqlens", cache_seqlens, (torch.int32,))
    if cache_seqlens.shape[0] != batch:
        raise ValueError(f"cache_seqlens: expected shape ({batch},) (the batch size of q), got "
                         f"{tuple(cache_seqlens.shape)}")


def check_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal, *,
                 for_kernel: bool, is_fp8_kvcache: bool = False) -> None:
    """Shapes, dtypes, layouts and devices of flash_mla_with_kvcache's inputs (no sync)."""
    for name, value in (("q", q), ("k_cache", k_cache), ("block_table", block_table),
                        ("cache_seqlens", cache_seqlens)):
        _require_tensor(name, value)

    _require_rank("q", q, 4, "[batch, s_q, h_q, head_dim]")
    batch, s_q, h_q, head_dim = q.shape
    if batch < 1 or s_q < 1 or h_q < 1:
        raise ValueError(f"q: expected batch, s_q and h_q >= 1, got shape {tuple(q.shape)}")
    if head_dim != HEAD_DIM:
        raise ValueError(f"q: expected head_dim (last dim) {HEAD_DIM}, got {head_dim}")
    if is_fp8_kvcache:
        _require_dtype("q", q, (torch.bfloat16,) if for_kernel else FP8_Q_DTYPES,
                       " with is_fp8_kvcache=True (the FP8 kernels take bf16 queries; float32 on the reference path)")
    else:
        dtypes = KERNEL_DTYPES if for_kernel else REFERENCE_DTYPES
        _require_dtype("q", q, dtypes, " (float32 only on the reference path)" if for_kernel else "")
    if not q.is_contiguous():
        raise ValueError(f"q: expected a contiguous tensor (the kernel reads it densely), got strides "
                         f"{q.stride()}; call q.contiguous()")
    if for_kernel:
        if batch > KERNEL_MAX_GRID_ROWS:
            raise ValueError(f"q: expected a batch of at most {KERNEL_MAX_GRID_ROWS} on the sm_90 kernel (its combine "
                             f"grid has a row per sequence), got {batch}")
        _require_aligned("q", q)
    device = q.device

    _require_rank("k_cache", k_cache, 4, "[num_blocks, page_size, h_kv, head_dim]")
    _require_device("k_cache", k_cache, device)
    if is_fp8_kvcache:
        _require_dtype("k_cache", k_cache, fp8_latent.FP8_CACHE_DTYPES, " with is_fp8_kvcache=True (FlashMLA's FP8 "
                                                                        "layout, bytes)")
    elif k_cache.dtype in fp8_latent.FP8_CACHE_DTYPES:
        raise TypeError(f"k_cache: expected dtype {str(q.dtype).replace('torch.', '')} (the dtype of q), got "
                        f"{str(k_cache.dtype).replace('torch.', '')}; an FP8 latent cache needs is_fp8_kvcache=True")
    else:
        _require_dtype("k_cache", k_cache, (q.dtype,), " (the dtype of q)")
    num_blocks, page_size, h_kv, k_head_dim = k_cache.shape
    if page_size != PAGE_SIZE:
        raise ValueError(f"k_cache: expected page size (dim 1) {PAGE_SIZE}, got {page_size}")
    if is_fp8_kvcache and k_head_dim != FP8_TOKEN_BYTES:
        raise ValueError(f"k_cache: expected {FP8_TOKEN_BYTES} bytes per token (last dim) with is_fp8_kvcache=True "
                         f"({HEAD_DIM_V} e4m3 values, {HEAD_DIM_V // fp8_latent.GROUP} float32 scales, "
                         f"{HEAD_DIM - HEAD_DIM_V} bf16 rope values), got {k_head_dim}")
    if not is_fp8_kvcache and k_head_dim != HEAD_DIM:
        raise ValueError(f"k_cache: expected head_dim (last dim) {HEAD_DIM}, got {k_head_dim}")
    if h_kv < 1 or h_q % h_kv != 0:
        raise ValueError(f"k_cache: expected h_kv (dim 2) >= 1 dividing h_q = {h_q}, got h_kv = {h_kv}")
    if for_kernel and h_kv != KERNEL_NUM_KV_HEADS:
        raise ValueError(f"k_cache: the sm_90 kernel expects h_kv = {KERNEL_NUM_KV_HEADS}, got {h_kv}")
    if not k_cache.is_contiguous():
        raise ValueError(f"k_cache: expected a contiguous tensor (pages are addressed by block id), got "
                         f"strides {k_cache.stride()}")
    if for_kernel:
        _require_aligned("k_cache", k_cache)

    _check_table_and_lengths(block_table, cache_seqlens, batch, device)
    if block_table.shape[1] > 0 and block_table.stride(-1) != 1:
        raise ValueError(f"block_table: expected last-dim stride 1, got strides {block_table.stride()}")
    if not cache_seqlens.is_contiguous():
        raise ValueError(f"cache_seqlens: expected a contiguous tensor, got strides {cache_seqlens.stride()}")

    _require_int("head_dim_v", head_dim_v)
    if head_dim_v != HEAD_DIM_V:
        raise ValueError(f"head_dim_v: expected {HEAD_DIM_V} (V is the first {HEAD_DIM_V} values of K), "
                         f"got {head_dim_v}")
    softmax_scale_or_default(softmax_scale)
    check_scalars(head_dim_v, causal, is_fp8_kvcache)


def check_reference_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                           is_fp8_kvcache) -> None:
    """mla_decode_reference's inputs: check_inputs' rules for any latent (head_dim d, head_dim_v <= d) and any page
    size, then the values (reads them: a sync on CUDA, which the reference makes anyway)."""
    for name, value in (("q", q), ("k_cache", k_cache), ("block_table", block_table),
                        ("cache_seqlens", cache_seqlens)):
        _require_tensor(name, value)
    _require_rank("q", q, 4, "[batch, s_q, h_q, head_dim]")
    batch, s_q, h_q, head_dim = q.shape
    if batch < 1 or s_q < 1 or h_q < 1 or head_dim < 1:
        raise ValueError(f"q: expected every dim >= 1, got shape {tuple(q.shape)}")
    _require_dtype("q", q, FP8_Q_DTYPES if is_fp8_kvcache else REFERENCE_DTYPES)
    require_data("q", q)
    check_scalars(head_dim_v, causal, is_fp8_kvcache)
    if not 1 <= head_dim_v <= head_dim:
        raise ValueError(f"head_dim_v: expected 1 .. {head_dim} (V is the first head_dim_v values of K), got "
                         f"{head_dim_v}")
    if softmax_scale is not None:
        softmax_scale_or_default(softmax_scale)
    _require_rank("k_cache", k_cache, 4, "[num_blocks, page_size, h_kv, head_dim]")
    _require_device("k_cache", k_cache, q.device)
    num_blocks, page_size, h_kv, row = k_cache.shape
    if is_fp8_kvcache:
        _require_dtype("k_cache", k_cache, fp8_latent.FP8_CACHE_DTYPES, " with is_fp8_kvcache=True")
        if head_dim_v % fp8_latent.GROUP:
            raise ValueError(f"head_dim_v: expected a multiple of {fp8_latent.GROUP} with is_fp8_kvcache=True (the "
                             f"quantized latent), got {head_dim_v}")
        expected = fp8_latent.token_bytes(head_dim_v, head_dim - head_dim_v)
        if row != expected:
            raise ValueError(f"k_cache: expected {expected} bytes per token (the FP8 layout of {head_dim_v} + "
                             f"{head_dim - head_dim_v} values), got {row}")
    else:
        _require_dtype("k_cache", k_cache, (q.dtype,), " (the dtype of q)")
        if row != head_dim:
            raise ValueError(f"k_cache: expected head_dim (last dim) {head_dim} (that of q), got {row}")
    if page_size < 1 or h_kv < 1 or h_q % h_kv != 0:
        raise ValueError(f"k_cache: expected page_size >= 1 and h_kv >= 1 dividing h_q = {h_q}, got shape "
                         f"{tuple(k_cache.shape)}")
    _check_table_and_lengths(block_table, cache_seqlens, batch, q.device)
    check_cache_values(k_cache, block_table, cache_seqlens, page_size)


def check_schedule_tensors(tile_scheduler_metadata, num_splits, batch: int, device: torch.device) -> None:
    """First-generation metadata: shapes, dtypes and devices consistent with this batch (no sync)."""
    _require_tensor("tile_scheduler_metadata", tile_scheduler_metadata)
    _require_tensor("num_splits", num_splits)
    _require_dtype("tile_scheduler_metadata", tile_scheduler_metadata, (torch.int32,))
    if (tile_scheduler_metadata.dim() != 2 or tile_scheduler_metadata.shape[0] < 1
            or tile_scheduler_metadata.shape[1] != METADATA_WIDTH):
        raise ValueError(f"tile_scheduler_metadata: expected shape [num_sm_parts >= 1, {METADATA_WIDTH}], "
                         f"got {tuple(tile_scheduler_metadata.shape)}")
    if not tile_scheduler_metadata.is_contiguous():
        raise ValueError("tile_scheduler_metadata: expected a contiguous tensor")
    _require_device("tile_scheduler_metadata", tile_scheduler_metadata, device)
    if tile_scheduler_metadata.shape[0] > KERNEL_MAX_GRID_ROWS:
        raise ValueError(f"tile_scheduler_metadata: expected at most {KERNEL_MAX_GRID_ROWS} parts (the decode grid has "
                         f"a row per part), got {tile_scheduler_metadata.shape[0]}")
    _require_dtype("num_splits", num_splits, (torch.int32,))
    if tuple(num_splits.shape) != (batch + 1,):
        raise ValueError(f"num_splits: expected shape ({batch + 1},) (batch + 1), got {tuple(num_splits.shape)}; "
                         f"was the metadata computed for another batch?")
    if not num_splits.is_contiguous():
        raise ValueError("num_splits: expected a contiguous tensor")
    _require_device("num_splits", num_splits, device)


def check_metadata_lengths(cache_seqlens) -> None:
    """get_mla_metadata's lengths are >= 0 (a negative one would make the schedule skip pages the decode call
    then reads as length 0, or fail there). Reads tensor values: a device->host sync on CUDA."""
    negative = cache_seqlens < 0
    if bool(negative.any()):
        i = int(negative.nonzero()[0, 0])
        raise ValueError(f"cache_seqlens: expected values >= 0, got {int(cache_seqlens[i])} at index {i}")


def check_metadata_args(cache_seqlens, num_q_tokens_per_head_k, num_heads_k) -> None:
    """Arguments of the first-generation get_mla_metadata (no sync)."""
    _require_tensor("cache_seqlens", cache_seqlens)
    _require_rank("cache_seqlens", cache_seqlens, 1, "[batch]")
    _require_dtype("cache_seqlens", cache_seqlens, (torch.int32,))
    if cache_seqlens.shape[0] < 1:
        raise ValueError("cache_seqlens: expected batch >= 1, got an empty tensor")
    _require_int("num_q_tokens_per_head_k", num_q_tokens_per_head_k)
    if not 1 <= num_q_tokens_per_head_k <= INT32_MAX:
        raise ValueError(f"num_q_tokens_per_head_k: expected s_q * h_q // h_kv in [1, {INT32_MAX}], got "
                         f"{num_q_tokens_per_head_k}")
    _require_int("num_heads_k", num_heads_k)
    if not 1 <= num_heads_k <= INT32_MAX:
        raise ValueError(f"num_heads_k: expected h_kv in [1, {INT32_MAX}], got {num_heads_k}")


def check_cache_values(k_cache, block_table, cache_seqlens, page_size: int = PAGE_SIZE) -> None:
    """cache_seqlens within [0, max_blocks * page_size]; block ids of used pages within [0, num_blocks).
    Only the first ceil(len / page_size) entries of each block_table row are read, so padding such as -1 in
    the rest is fine. Reads tensor values: a device->host sync on CUDA."""
    max_blocks = block_table.shape[1]
    lengths = cache_seqlens.to(torch.int64)
    too_short = lengths < 0
    if bool(too_short.any()):
        i = int(too_short.nonzero()[0, 0])
        raise ValueError(f"cache_seqlens: expected values >= 0, got {int(lengths[i])} at index {i}")
    too_long = lengths > max_blocks * page_size
    if bool(too_long.any()):
        i = int(too_long.nonzero()[0, 0])
        raise ValueError(f"cache_seqlens: expected values <= max_blocks_per_seq * {page_size} = "
                         f"{max_blocks * page_size} (what block_table covers), got {int(lengths[i])} at index {i}")
    num_blocks = k_cache.shape[0]
    pages_used = (lengths + page_size - 1) // page_size
    used = torch.arange(max_blocks, device=block_table.device)[None, :] < pages_used[:, None]
    out_of_pool = used & ((block_table < 0) | (block_table >= num_blocks))
    if bool(out_of_pool.any()):
        i, j = (int(v) for v in out_of_pool.nonzero()[0])
        raise ValueError(f"block_table: expected block ids in [0, {num_blocks}) (the pages of k_cache) for the "
                         f"pages in use, got {int(block_table[i, j])} at [{i}, {j}]")
