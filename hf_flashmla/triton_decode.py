"""Portable Triton kernel for paged MLA decoding: the path for CUDA GPUs where the sm_90 kernel does not
apply (Ampere, Ada, Blackwell, or Hopper without the built extension), and selectable anywhere with
HF_FLASHMLA_BACKEND=triton (on the CPU only under TRITON_INTERPRET=1, for tests).

Same semantics as hf_flashmla.reference (see README's API table): q [b, s_q, h_q, 576],
k_cache [num_blocks, 64, h_kv, 576], V = the first 512 values of each K vector (other latents too, e.g. MiniCPM3's
and Mistral-4's 256 + 32 / 256 + 64, where both parts are powers of two: supports_latent); causal query token t
of a sequence of length L sees keys 0 .. L - s_q + t; a query that sees no key gets out = 0, lse = +inf; NaN in q
or in a visible key propagates to out and lse. Keys past a sequence's length are never loaded (masked loads), so
whatever the cache holds there (NaN included) never reaches the output.

Design (split-KV, two launches):
  1. _split_kernel, grid (row blocks, splits, b * h_kv). A program takes BLOCK_M query rows that share
     one KV head (rows = s_q * h_q / h_kv: every query token and head of the group) and one contiguous
     range of the sequence's pages. Each K/V tile is loaded once for all those rows, which is what makes
     the kernel memory-efficient for MLA (h_kv = 1): with BLOCK_M >= h_q * s_q the cache is read once.
     Scores are two dot products, 512 latent + 64 rope columns (no padding to 1024), and P V reuses
     the latent part of the same tile as V. Online softmax in float32 (exp2 domain).
  2. _combine_kernel merges the splits of each row by their lse. With one split, (1) writes the final
     out / lse itself and (2) is not launched.
The split count comes from the SM count and the shapes only (no device->host sync), so that small
batches with long contexts still fill the GPU. Tile sizes come from a fixed table (tile_config), not
from autotuning: autotuning would time every new shape on first use (each decode batch size) and its
choice would differ between runs; the table is what the shapes need (see the comments there).

FP8 cache (is_fp8_kvcache, hf_flashmla/fp8_latent.py): the same kernel with FP8=True loads each K tile as its
bytes (512 e4m3 values per token), the token's four float32 scales and its 64 bf16 rope values, and dequantizes in
registers (float(e4m3) * scale in float32, rounded to q's dtype: the reference's rule) before the same two dots;
the tile then serves as V as before. Only the loads differ: 656 bytes per token are read instead of 1152. The
scales are loaded as [N, 4] and broadcast in registers: loaded per column they took a [N, 512] float32 buffer per
pipeline stage. It uses the bf16 tile table; offline compiles (Triton 3.9, sm_90; not yet timed) give 85 KB of shared
memory and 56 B of spill stack for 16-row tiles (bf16: 59 KB, 32 B) and 103 KB, 888 B for 32-row tiles (bf16:
78 KB, 360 B).

Robustness without value checks: a program reads only block-table entries below
min(ceil(L / 64), max_blocks) of its own row, and clamps block ids into [0, num_blocks), so bad
lengths or ids give wrong numbers but never a memory fault.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from hf_flashmla import fp8_latent

PAGE_SIZE = 64
D_LATENT = 512  # = head_dim_v: V is the latent part of K (DeepSeek's shape; supports_latent says what else runs)
D_ROPE = 64
LOG2E = 1.4426950408889634
MAX_SPLITS = 64
MIN_PAGES_PER_SPLIT = 4  # below this a split's partial output (rows x 2 KB) costs more than it hides
INTERPRETER_SMS = 4  # stands in for the SM count under TRITON_INTERPRET, so that CPU tests split


def supports_latent(d_v: int, d_pe: int) -> bool:
    """Whether this kernel takes a latent of d_v values (also V) + d_pe rope values: tl.arange needs powers of two,
    and tl.dot an inner dimension of at least 16."""
    def power_of_two(n):
        return n >= 16 and n & (n - 1) == 0
    return power_of_two(d_v) and d_v <= D_LATENT and power_of_two(d_pe) and d_pe <= D_ROPE


@triton.jit
def _mma(a, b, acc, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b with float32 accumulation. UPCAST (Triton's CPU interpreter only): its dot multiplies
    bfloat16 operands as raw uint16 bits, so the operands go through float32 there; on the GPU the
    16-bit operands feed the tensor cores directly."""
    if UPCAST:
        result = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        result = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return result


@triton.jit
def _e4m3_to_float32(bits, NATIVE: tl.constexpr):
    """float8_e4m3fn bytes -> float32. NATIVE: Triton's conversion (compute capability >= 8.9, and the interpreter);
    else (Triton refuses the e4m3 type below sm_89) the byte's exponent and mantissa are placed in an fp16's
    (sign to bit 15, the other 7 bits to bits 7-13) and the fp16 times 2^8 (the bias 15 - 7) is the value, subnormals
    included; 0x7F / 0xFF, e4m3's NaN, would read as 480 and are set to NaN."""
    if NATIVE:
        value = bits.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    else:
        word = bits.to(tl.uint16)
        half = ((word & 0x80) << 8) | ((word & 0x7F) << 7)
        value = half.to(tl.float16, bitcast=True).to(tl.float32) * 256.0
        value = tl.where((word & 0x7F) == 0x7F, float("nan"), value)
    return value


@triton.jit
def _rounded(x, DTYPE: tl.constexpr, EXACT_ROUNDING: tl.constexpr):
    """float32 -> DTYPE rounding to nearest even. EXACT_ROUNDING (the interpreter, whose float32 -> bf16 cast
    truncates): the rounding is done on the bits first, so that the cast is exact."""
    if EXACT_ROUNDING:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


@triton.jit
def _load_fp8_tile(KV, KV_SCALE, KV_ROPE, row_bytes, key_ok, offs_v, offs_rope, DTYPE: tl.constexpr,
                   D_V: tl.constexpr, GROUP: tl.constexpr, NATIVE: tl.constexpr, EXACT_ROUNDING: tl.constexpr):
    """One tile of FP8 tokens (row_bytes: each token's byte offset in the pool) -> (latent [N, D_V], rope [N, D_PE])
    in DTYPE. KV_SCALE / KV_ROPE are the pool viewed as float32 / bf16; the scales start at byte D_V, the rope at
    byte D_V + 4 * D_V / GROUP."""
    values = tl.load(KV + row_bytes[:, None] + offs_v[None, :], mask=key_ok[:, None], other=0)
    GROUPS: tl.constexpr = D_V // GROUP
    scale_ptr = KV_SCALE + (row_bytes // 4 + D_V // 4)[:, None] + tl.arange(0, GROUPS)[None, :]
    scales = tl.load(scale_ptr, mask=key_ok[:, None], other=0.0)  # [N, GROUPS]
    scales = tl.reshape(tl.broadcast_to(scales[:, :, None], [scales.shape[0], GROUPS, GROUP]), [scales.shape[0], D_V])
    latent = _rounded(_e4m3_to_float32(values, NATIVE) * scales, DTYPE, EXACT_ROUNDING)
    rope_ptr = KV_ROPE + (row_bytes // 2 + (D_V + 4 * (D_V // GROUP)) // 2)[:, None] + offs_rope[None, :]
    rope = tl.load(rope_ptr, mask=key_ok[:, None], other=0.0).to(DTYPE)
    return latent, rope


@triton.jit
def _split_kernel(Q, KV, KV_SCALE, KV_ROPE, BLOCK_TABLE, SEQLENS, OUT, LSE, O_PART, LSE_PART,
                  stride_qb, stride_qt, stride_qh,
                  stride_kv_page, stride_kv_tok, stride_kv_head,
                  stride_bt, max_blocks, num_blocks,
                  s_q, group, h_q, scale_log2, num_splits,
                  DIRECT_OUT: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, PAGE: tl.constexpr, D_V: tl.constexpr,
                  D_PE: tl.constexpr, FP8: tl.constexpr, GROUP: tl.constexpr, FP8_NATIVE: tl.constexpr):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    pid_bk = tl.program_id(2)  # batch * h_kv + kv head
    h_kv = h_q // group
    batch = pid_bk // h_kv
    kv_head = pid_bk % h_kv
    rows = s_q * group

    # Row r of this KV head = query token r // group, query head kv_head * group + r % group.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < rows
    token = offs_m // group
    head = kv_head * group + offs_m % group
    offs_v = tl.arange(0, D_V)
    offs_pe = D_V + tl.arange(0, D_PE)

    # Lengths beyond the block-table row are clamped so no entry past the row is ever read.
    length = tl.minimum(tl.maximum(tl.load(SEQLENS + batch), 0), max_blocks * PAGE)
    # Last visible key of each row (inclusive); rows past the block see nothing.
    if CAUSAL:
        last_key = length - s_q + token
    else:
        last_key = tl.zeros([BLOCK_M], dtype=tl.int32) + (length - 1)
    last_key = tl.where(row_ok, last_key, -1)

    # This split's pages: an equal share of the sequence's own pages (varlen batches split per sequence).
    num_pages = tl.cdiv(length, PAGE)
    pages_per_split = tl.cdiv(num_pages, num_splits)
    key_start = split * pages_per_split * PAGE
    key_end = tl.minimum(key_start + pages_per_split * PAGE, length)
    if CAUSAL:  # nothing past the last key that the block's last query token sees
        last_token = (tl.minimum(rows, (pid_m + 1) * BLOCK_M) - 1) // group
        key_end = tl.minimum(key_end, length - s_q + last_token + 1)

    q_ptr = Q + batch.to(tl.int64) * stride_qb + token * stride_qt + head * stride_qh
    q_latent = tl.load(q_ptr[:, None] + offs_v[None, :], mask=row_ok[:, None], other=0.0)
    q_rope = tl.load(q_ptr[:, None] + offs_pe[None, :], mask=row_ok[:, None], other=0.0)

    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # log2 domain
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_V], dtype=tl.float32)
    bt_row = BLOCK_TABLE + batch.to(tl.int64) * stride_bt
    kv_base = KV + kv_head * stride_kv_head
    # The block id of each tile is loaded one iteration ahead (a loop-carried value, not a load feeding
    # the K load in the same iteration): Triton's pipeliner then gives the K/V loads their own stages
    # instead of splitting the pipeline depth between the two levels of indirection.
    block = tl.load(bt_row + key_start // PAGE, mask=key_start < key_end, other=0)
    for start in range(key_start, key_end, BLOCK_N):
        # BLOCK_N divides the page size and splits start on page boundaries: one page per tile.
        next_start = start + BLOCK_N
        next_block = tl.load(bt_row + next_start // PAGE, mask=next_start < key_end, other=0)
        block = tl.minimum(tl.maximum(block, 0), num_blocks - 1).to(tl.int64)
        offs_n = start + tl.arange(0, BLOCK_N)
        key_ok = offs_n < key_end
        if FP8:  # strides in bytes
            row_bytes = kv_head * stride_kv_head + block * stride_kv_page + (offs_n % PAGE) * stride_kv_tok
            k_latent, k_rope = _load_fp8_tile(KV, KV_SCALE, KV_ROPE, row_bytes, key_ok, offs_v,
                                              tl.arange(0, D_PE), Q.dtype.element_ty, D_V, GROUP, FP8_NATIVE,
                                              UPCAST)  # also V
        else:
            k_ptr = kv_base + block * stride_kv_page + (offs_n % PAGE) * stride_kv_tok
            k_latent = tl.load(k_ptr[:, None] + offs_v[None, :], mask=key_ok[:, None], other=0.0)  # also V
            k_rope = tl.load(k_ptr[:, None] + offs_pe[None, :], mask=key_ok[:, None], other=0.0)

        scores = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        scores = _mma(q_latent, tl.trans(k_latent), scores, DOT_PRECISION, UPCAST)
        scores = _mma(q_rope, tl.trans(k_rope), scores, DOT_PRECISION, UPCAST)
        scores = scores * scale_log2
        visible = (offs_n[None, :] <= last_key[:, None]) & key_ok[None, :]
        scores = tl.where(visible, scores, float("-inf"))

        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        # Rows that have seen no key yet keep max = -inf; shift by 0 there to avoid inf - inf.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        probs = tl.math.exp2(scores - shift[:, None])
        rescale = tl.math.exp2(row_max - shift)
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)
        acc = acc * rescale[:, None]
        acc = _mma(probs.to(k_latent.dtype), k_latent, acc, DOT_PRECISION, UPCAST)
        row_max = new_max
        block = next_block

    # A row saw a key iff its sum is not 0 (its largest term is 1); a NaN sum counts as seen so that NaN propagates.
    seen = row_sum != 0
    out = acc / tl.where(seen, row_sum, 1.0)[:, None]
    lse = (row_max + tl.math.log2(tl.where(seen, row_sum, 1.0))) * 0.6931471805599453
    if DIRECT_OUT:  # a single split: write the final result, no combine launch
        o_ptr = OUT + ((batch.to(tl.int64) * s_q + token) * h_q + head) * D_V
        tl.store(o_ptr[:, None] + offs_v[None, :], out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
        tl.store(LSE + (batch.to(tl.int64) * h_q + head) * s_q + token, tl.where(seen, lse, float("inf")),
                 mask=row_ok)
    else:
        part_row = (pid_bk.to(tl.int64) * num_splits + split) * rows + offs_m
        tl.store(O_PART + part_row[:, None] * D_V + offs_v[None, :], out, mask=row_ok[:, None])
        tl.store(LSE_PART + part_row, tl.where(seen, lse, float("-inf")), mask=row_ok)


@triton.jit
def _combine_kernel(OUT, LSE, O_PART, LSE_PART, s_q, group, h_q, num_splits,
                    SPLITS_POW2: tl.constexpr, CHUNK: tl.constexpr, D_V: tl.constexpr):
    """One program per query row: out = sum_s exp(lse_s - lse) * out_s, lse = log sum_s exp(lse_s).
    All splits of a CHUNK of columns are loaded at once (one latency per chunk, not per split)."""
    row = tl.program_id(0)
    pid_bk = tl.program_id(1)
    h_kv = h_q // group
    batch = pid_bk // h_kv
    token = row // group
    head = (pid_bk % h_kv) * group + row % group
    rows = s_q * group

    offs_s = tl.arange(0, SPLITS_POW2)
    split_ok = offs_s < num_splits
    part_rows = (pid_bk.to(tl.int64) * num_splits + offs_s) * rows + row
    split_lse = tl.load(LSE_PART + part_rows, mask=split_ok, other=float("-inf"))
    top = tl.max(split_lse, axis=0)
    seen = top > float("-inf")  # some split saw a key
    shift = tl.where(seen, top, 0.0)
    total = tl.sum(tl.exp(split_lse - shift), axis=0)
    lse = tl.where(seen, shift + tl.log(tl.where(seen, total, 1.0)), float("inf"))
    # A split's NaN lse (NaN in q or in a visible key) makes the row NaN: max may skip NaN, so test it explicitly.
    has_nan = tl.sum((split_lse != split_lse).to(tl.int32), axis=0) > 0
    lse = tl.where(has_nan, float("nan"), lse)
    weights = tl.exp(split_lse - lse)  # 0 for empty splits, and everywhere for a row that saw nothing

    o_ptr = OUT + ((batch.to(tl.int64) * s_q + token) * h_q + head) * D_V
    for chunk in tl.static_range(D_V // CHUNK):
        cols = chunk * CHUNK + tl.arange(0, CHUNK)
        parts = tl.load(O_PART + part_rows[:, None] * D_V + cols[None, :], mask=split_ok[:, None], other=0.0)
        tl.store(o_ptr + cols, tl.sum(parts * weights[:, None], axis=0).to(OUT.dtype.element_ty))
    tl.store(LSE + (batch.to(tl.int64) * h_q + head) * s_q + token, lse)


# Under TRITON_INTERPRET=1 (at import) triton.jit returns an InterpretedFunction instead of a JITFunction.
INTERPRETED = not isinstance(_split_kernel, triton.runtime.jit.JITFunction)


class TileConfig(NamedTuple):
    block_m: int          # query rows per program (tl.dot needs M >= 16)
    block_n: int          # keys per loop step (divides the page size)
    num_warps: int
    num_stages: int       # software-pipeline depth: num_stages - 1 K tiles buffered in shared memory
    programs_per_sm: int  # residency the table aims for; only sizes the split count


def tile_config(rows: int, dtype: torch.dtype) -> TileConfig:
    """Fixed table by rows per KV head (s_q * h_q / h_kv). Resource figures are from offline compiles
    (Triton 3.6 and 3.9, sm_80 and sm_90; no GPU needed to compile).

    Up to 32 rows the work is memory-bound: one program covers every row, so the cache is read once.
    4 warps (mma.sync: M = 16 / 32 is below wgmma's 64), 32-key tiles (36 KB of K in bf16), 3 stages
    (two tile buffers: one loads while the other is consumed). 16 rows: 91 KB of shared memory,
    128-192 registers; 32 rows: 110 KB, 255 registers: two programs share an H100 SM either way
    (8 warps at 32 rows would need 162 registers x 256 threads: one program per SM). Above 32 rows,
    64-row blocks with 8 warps (wgmma on sm_90; 180 KB, 236-255 registers, one program per SM) bound
    the re-reads of the cache to rows / 64; programs of the same split but other row blocks are
    neighbours in the grid, so the re-read mostly hits L2. float32 inputs (rare on GPU; exact "ieee"
    dots run on FMA units, whose larger tiles spill) take 16-row, 16-key tiles."""
    if dtype == torch.float32:
        return TileConfig(16, 16, 4, 2, 2)
    if rows <= 16:
        return TileConfig(16, 32, 4, 3, 2)
    if rows <= 32:
        return TileConfig(32, 32, 4, 3, 2)
    return TileConfig(64, 32, 8, 3, 1)


def _fallbacks(config: TileConfig):
    """config, then smaller pipelines for GPUs with less shared memory (e.g. 100 KB on sm_86/sm_89)."""
    yield config
    if config.num_stages > 2:
        yield config._replace(num_stages=2)
    if config.block_n > 16:
        yield config._replace(block_n=16, num_stages=2)


def _shared_bytes(config: TileConfig, element_size: int, token_bytes: int | None = None,
                  head_dim: int = D_LATENT + D_ROPE) -> int:
    """Q tile + buffered K tiles (+1 KB reserved per block): matches the compiled kernels' figures for bf16/fp16
    caches. token_bytes: a K token's bytes when they differ from the Q row's (an FP8 cache: 656)."""
    token_bytes = head_dim * element_size if token_bytes is None else token_bytes
    return config.block_m * head_dim * element_size + (config.num_stages - 1) * config.block_n * token_bytes + 1024


@functools.lru_cache(maxsize=None)
def _device_limits(device: torch.device) -> tuple[int, int]:
    """(SM count, shared memory per SM); fixed stand-ins under the interpreter so CPU tests split."""
    if device.type != "cuda":
        return INTERPRETER_SMS, 1 << 30
    props = torch.cuda.get_device_properties(device)
    shared = getattr(props, "shared_memory_per_multiprocessor", 0)
    if not shared:  # older torch: Triton's figure (the per-block opt-in maximum, ~ the per-SM one)
        try:
            index = device.index if device.index is not None else torch.cuda.current_device()
            shared = triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]
        except Exception:  # an estimate only sizes the split count
            shared = 100 * 1024
    return props.multi_processor_count, shared


@functools.lru_cache(maxsize=None)
def _native_fp8(device: torch.device) -> bool:
    """Whether Triton converts e4m3 itself here: compute capability >= 8.9 (and the interpreter)."""
    return device.type != "cuda" or tuple(torch.cuda.get_device_capability(device)) >= (8, 9)


def choose_num_splits(work_items: int, max_pages: int, num_sms: int, programs_per_sm: int) -> int:
    """Smallest split count whose waves are nearly full (within 85% of the best wave efficiency), bounded
    so that a split keeps >= MIN_PAGES_PER_SPLIT pages of the longest sequence the block table allows.
    work_items = programs per split (row blocks * b * h_kv); max_pages = block_table's width.
    Uses shapes only, so it never waits for the GPU and a CUDA graph replays the same grid."""
    slots = num_sms * programs_per_sm
    limit = max(1, min(MAX_SPLITS, max_pages // MIN_PAGES_PER_SPLIT))
    if work_items >= 0.8 * slots or limit == 1:
        return 1

    def efficiency(splits):
        programs = work_items * splits
        return programs / (-(-programs // slots) * slots)

    best = max(efficiency(s) for s in range(1, limit + 1))
    return next(s for s in range(1, limit + 1) if efficiency(s) >= 0.85 * best)


# (device, table config) -> the config that compiled within the device's resources.
_WORKING_CONFIG: dict = {}


def mla_decode_triton(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor,
                      cache_seqlens: torch.Tensor, head_dim_v: int, softmax_scale: float, causal: bool,
                      num_splits: int | None = None, config: TileConfig | None = None,
                      is_fp8_kvcache: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs as validated by hf_flashmla.flash_mla_with_kvcache (q, k_cache contiguous; block_table
    last-dim stride 1). Returns out [b, s_q, h_q, 512] in q's dtype and lse float32 [b, h_q, s_q].
    num_splits and config override the heuristics (tests, tuning runs). is_fp8_kvcache: k_cache is uint8 or
    float8_e4m3fn [num_blocks, 64, h_kv, 656] in FlashMLA's FP8 layout (hf_flashmla/fp8_latent.py)."""
    batch, s_q, h_q, head_dim = q.shape
    num_blocks, page_size, h_kv, token_width = k_cache.shape
    d_v, d_pe = head_dim_v, head_dim - head_dim_v
    assert supports_latent(d_v, d_pe) and page_size == PAGE_SIZE
    if is_fp8_kvcache:
        assert token_width == fp8_latent.token_bytes(d_v, d_pe)
        kv = k_cache.view(torch.uint8)
        kv_scale, kv_rope = kv.view(torch.float32), kv.view(fp8_latent.ROPE_DTYPE)  # the same bytes, other units
        token_bytes = token_width
    else:
        kv = kv_scale = kv_rope = k_cache
        token_bytes = None
    group = h_q // h_kv
    rows = s_q * group
    config = config or tile_config(rows, q.dtype)
    config = _WORKING_CONFIG.get((q.device, config), config)
    row_blocks = triton.cdiv(rows, config.block_m)
    max_blocks = block_table.shape[1]
    if num_splits is None:
        num_sms, shared_per_sm = _device_limits(q.device)
        resident = max(1, min(config.programs_per_sm,
                               shared_per_sm // _shared_bytes(config, q.element_size(), token_bytes, head_dim)))
        num_splits = choose_num_splits(row_blocks * batch * h_kv, max_blocks, num_sms, resident)

    out = torch.empty(batch, s_q, h_q, d_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, h_q, s_q, dtype=torch.float32, device=q.device)
    if num_splits > 1:
        o_part = torch.empty(batch * h_kv, num_splits, rows, d_v, dtype=torch.float32, device=q.device)
        lse_part = torch.empty(batch * h_kv, num_splits, rows, dtype=torch.float32, device=q.device)
    else:
        o_part, lse_part = out, lse  # not read: the split kernel writes out / lse itself
    if max_blocks == 0 or num_blocks == 0:  # no pages: every query sees nothing; give the kernel a row to point at
        block_table, max_blocks = torch.zeros(batch, 1, dtype=torch.int32, device=q.device), 0

    def launch(tiles: TileConfig):
        _split_kernel[(triton.cdiv(rows, tiles.block_m), num_splits, batch * h_kv)](
            q, kv, kv_scale, kv_rope, block_table, cache_seqlens, out, lse, o_part, lse_part,
            q.stride(0), q.stride(1), q.stride(2),
            kv.stride(0), kv.stride(1), kv.stride(2),
            block_table.stride(0), max_blocks, max(num_blocks, 1),
            s_q, group, h_q, softmax_scale * LOG2E, num_splits,
            DIRECT_OUT=num_splits == 1, CAUSAL=causal, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n,
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else None,  # None: the default (16-bit dots)
            UPCAST=INTERPRETED and q.dtype == torch.bfloat16,
            PAGE=PAGE_SIZE, D_V=d_v, D_PE=d_pe, FP8=is_fp8_kvcache, GROUP=fp8_latent.GROUP,
            FP8_NATIVE=_native_fp8(q.device),
            num_warps=tiles.num_warps, num_stages=tiles.num_stages)

    for tiles in _fallbacks(config):
        try:
            launch(tiles)  # OutOfResources is raised when loading the compiled kernel, before it runs
        except OutOfResources as error:
            out_of_resources = error
            continue
        if tiles != config:
            _WORKING_CONFIG[(q.device, config)] = tiles
        break
    else:
        raise out_of_resources
    if num_splits > 1:
        splits_pow2 = triton.next_power_of_2(num_splits)
        _combine_kernel[(rows, batch * h_kv)](
            out, lse, o_part, lse_part, s_q, group, h_q, num_splits,
            SPLITS_POW2=splits_pow2, CHUNK=max(min(32, d_v), min(d_v, 4096 // splits_pow2)), D_V=d_v, num_warps=4)
    return out, lse


def decode_on_device(q: torch.Tensor, k_cache: torch.Tensor, block_table: torch.Tensor, cache_seqlens: torch.Tensor,
                     head_dim_v: int, softmax_scale: float, causal: bool,
                     is_fp8_kvcache: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """mla_decode_triton on q's device: Triton launches on the current device and stream, and device_map puts
    layers on several GPUs. (On the CPU: TRITON_INTERPRET, for tests.)"""
    if q.device.type != "cuda":
        return mla_decode_triton(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                                 is_fp8_kvcache=is_fp8_kvcache)
    with torch.cuda.device(q.device):
        return mla_decode_triton(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal,
                                 is_fp8_kvcache=is_fp8_kvcache)
