"""The FP8 latent layout (FlashMLA's, for DeepSeek-V3.2): what a token's latent row becomes in an FP8 cache.

A latent row of kv_lora_rank + rope values (512 + 64 for every served model) is stored as bytes:
  [0, rank)                     the latent, float8_e4m3fn, group g of GROUP values divided by scale g;
  [rank, rank + 4 * rank/GROUP) one float32 scale per group: amax(|group|) * (1 / 448) (448: e4m3's largest),
                                rounded up to a bfloat16 value (see below);
  [.., + 2 * rope)              the rope part in bfloat16 (not quantized: it carries the positions).
For 512 + 64 that is 512 + 16 + 128 = 656 bytes, against 1152 in bf16.

Dequantization: float(e4m3) * scale in float32, rounded to the dtype the attention computes in (bf16 on the
Triton kernel's and the sm_90 kernel's tensor cores where s_q * h_q > 16, q's dtype on the reference path). The
sm_90 kernel's narrow form (s_q * h_q <= EXACT_KEYS_MAX_ROWS) multiplies the e4m3 values, exact in f16, and applies
each scale to the float32 products: its keys are exact, as the reference's are for a float32 q. The rope part is
bf16 as stored.

The scales are bfloat16 values (in float32 fields, so FlashMLA's layout holds): the product of an e4m3 value (4
significant bits) and such a scale (8) is exact in float32, so the sm_90 kernel's wide form dequantizes with one bf16x2
multiply per two values and gets the float32 rule's result bit for bit (csrc/mla_decode_fp8_feed.cuh; scales of a
cache written elsewhere take its float32 path). Rounding up keeps every value within e4m3's range and costs at most
2^-7 of it at the top, so the largest value of a group still maps to 448.

Quantization is pure torch ops on the latent's device (the cache's write on the sm_90 kernel's device is one fused
kernel with the same bytes, csrc/fp8_latent_write.cu): no host sync, so it runs inside CUDA graphs.
"""
from __future__ import annotations

import numbers

import torch

FP8_E4M3 = "fp8_e4m3"
KV_CACHE_DTYPES = ("auto", FP8_E4M3)  # "auto": the latent in the model's dtype
GROUP = 128          # latent values per scale
FP8_MAX = 448.0      # largest finite float8_e4m3fn
SCALE_BYTES = 4      # one float32 per group
ROPE_DTYPE = torch.bfloat16
FP8_CACHE_DTYPES = (torch.uint8, torch.float8_e4m3fn)  # what a k_cache in this layout may be typed as
EXACT_KEYS_MAX_ROWS = 32  # s_q * h_q up to which the sm_90 kernel reads keys exactly (csrc/mla_decode_fp8_narrow.cuh)


def kv_cache_dtype_or_default(value, name: str = "kv_cache_dtype") -> str:
    """'auto' (None too) or 'fp8_e4m3' (also spelled 'fp8', 'fp8_e4m3fn', torch.float8_e4m3fn); else ValueError."""
    if value is None:
        return "auto"
    if value is torch.float8_e4m3fn:
        return FP8_E4M3
    if isinstance(value, str):
        spelled = value.strip().lower()
        if spelled in ("auto", "bf16", "bfloat16", "model"):
            return "auto"
        if spelled in ("fp8", "fp8_e4m3", "fp8_e4m3fn", "float8_e4m3fn"):
            return FP8_E4M3
    raise ValueError(f"{name}: expected 'auto' (the latent in the model's dtype) or '{FP8_E4M3}' (FlashMLA's FP8 "
                     f"layout: e4m3 latent with one float32 scale per {GROUP} values, bf16 rope), got {value!r}")


def token_bytes(kv_lora_rank: int, rope_dim: int) -> int:
    """Bytes of one token's latent row in the FP8 layout (656 for 512 + 64)."""
    return kv_lora_rank + SCALE_BYTES * (kv_lora_rank // GROUP) + ROPE_DTYPE.itemsize * rope_dim


def check_latent_shape(kv_lora_rank: int, rope_dim: int, name: str = "kv_cache_dtype") -> None:
    if kv_lora_rank < GROUP or kv_lora_rank % GROUP:
        raise ValueError(f"{name}: the FP8 layout quantizes the latent in groups of {GROUP} values; this model's "
                         f"kv_lora_rank is {kv_lora_rank}")


def split_dims(row_bytes: int, latent_dim: int) -> tuple[int, int]:
    """(kv_lora_rank, rope_dim) of a layout whose rows are row_bytes long and hold latent_dim values."""
    # row_bytes = rank + 4 rank / 128 + 2 (latent_dim - rank) = 2 latent_dim - rank (1 - 1/32)
    rank = (2 * latent_dim - row_bytes) * GROUP // (GROUP - SCALE_BYTES)
    if rank <= 0 or token_bytes(rank, latent_dim - rank) != row_bytes:
        raise ValueError(f"k_cache: {row_bytes} bytes per token is not the FP8 layout of {latent_dim} values")
    return rank, latent_dim - rank


def _type_name(value) -> str:
    from hf_flashmla.validation import type_name  # on error paths only: validation imports this module

    return type_name(value)


def _check_rank(kv_lora_rank, row_limit: int, row: str) -> None:
    """kv_lora_rank: an int, a positive multiple of GROUP, within a row of row_limit values (row names them)."""
    if isinstance(kv_lora_rank, bool) or not isinstance(kv_lora_rank, numbers.Integral):
        raise TypeError(f"kv_lora_rank: expected an int, got {_type_name(kv_lora_rank)}")
    if kv_lora_rank < GROUP or kv_lora_rank % GROUP or kv_lora_rank > row_limit:
        raise ValueError(f"kv_lora_rank: expected a positive multiple of {GROUP} (the values per scale) of at most "
                         f"{row_limit} ({row}), got {kv_lora_rank}")


def _check_tensor(name: str, value, dtypes, what: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {_type_name(value)}")
    if value.dtype not in dtypes:
        raise TypeError(f"{name}: expected {what}, got dtype {str(value.dtype).replace('torch.', '')}")
    if value.dim() < 1:
        raise ValueError(f"{name}: expected a tensor [..., row], got a scalar")


LATENT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def quantize(latent: torch.Tensor, kv_lora_rank: int) -> torch.Tensor:
    """latent [..., rank + rope] (a float dtype) -> uint8 [..., token_bytes]."""
    _check_tensor("latent", latent, LATENT_DTYPES, "a float32, bfloat16, float16 or float64 latent")
    _check_rank(kv_lora_rank, latent.shape[-1], "the latent row's length")
    rank = kv_lora_rank
    rope = latent.shape[-1] - rank
    lead = latent.shape[:-1]
    groups = latent[..., :rank].to(torch.float32).reshape(*lead, rank // GROUP, GROUP)
    # Times the reciprocal, not divided by 448: CUDA computes a tensor divided by a Python number as that product,
    # the CPU as a true division, so only the product gives the same bytes on every device (test_fp8_kernel.py
    # compares the two on a GPU).
    scale = round_up_to_bf16(groups.abs().amax(dim=-1, keepdim=True) * (1.0 / FP8_MAX))
    # A zero group keeps scale 0 (it dequantizes to 0); dividing by 1 there avoids 0 / 0. Clamping keeps a value
    # that rounds just above 448 from becoming NaN (e4m3fn has no infinity).
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    values = (groups / divisor).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    out = torch.empty(*lead, token_bytes(rank, rope), dtype=torch.uint8, device=latent.device)
    out[..., :rank] = values.reshape(*lead, rank).view(torch.uint8)
    scale_end = rank + SCALE_BYTES * (rank // GROUP)
    out[..., rank:scale_end] = scale.reshape(*lead, rank // GROUP).view(torch.uint8).reshape(*lead, scale_end - rank)
    rope_bytes = latent[..., rank:].to(ROPE_DTYPE).contiguous().view(torch.uint8)
    out[..., scale_end:] = rope_bytes
    return out


def round_up_to_bf16(x: torch.Tensor) -> torch.Tensor:
    """float32 x >= 0 (or NaN, kept) -> the least bfloat16 value >= x, as float32: the low 16 bits rounded up."""
    nan = torch.isnan(x)
    bits = torch.where(nan, torch.zeros_like(x), x).view(torch.int32)
    up = ((bits + 0xFFFF) & -0x10000).view(torch.float32)
    return torch.where(nan, x, up)


def dequantize(stored: torch.Tensor, kv_lora_rank: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (or float8_e4m3fn) [..., token_bytes] -> [..., rank + rope] in dtype: float(e4m3) * scale in float32,
    then rounded to dtype (see the module docstring)."""
    _check_tensor("stored", stored, FP8_CACHE_DTYPES, "uint8 or float8_e4m3fn bytes in the FP8 layout")
    _check_rank(kv_lora_rank, stored.shape[-1], "the stored row's bytes")
    rope_bytes = stored.shape[-1] - token_bytes(kv_lora_rank, 0)
    if rope_bytes < 0 or rope_bytes % ROPE_DTYPE.itemsize:
        raise ValueError(f"stored: expected rows of {token_bytes(kv_lora_rank, 0)} + 2 * rope_dim bytes (the FP8 "
                         f"layout of kv_lora_rank {kv_lora_rank}), got {stored.shape[-1]}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch.dtype, got {dtype!r}")
    stored = stored.view(torch.uint8)
    rank = kv_lora_rank
    groups = rank // GROUP
    scale_end = rank + SCALE_BYTES * groups
    lead = stored.shape[:-1]
    values = stored[..., :rank].contiguous().view(torch.float8_e4m3fn).to(torch.float32)
    scale = stored[..., rank:scale_end].contiguous().view(torch.float32)
    latent = (values.reshape(*lead, groups, GROUP) * scale[..., None]).reshape(*lead, rank)
    rope = stored[..., scale_end:].contiguous().view(ROPE_DTYPE)
    return torch.cat((latent.to(dtype), rope.to(dtype)), dim=-1)


def round_trip(latent: torch.Tensor, kv_lora_rank: int) -> torch.Tensor:
    """What a reader gets back for this latent from an FP8 cache, in the latent's dtype."""
    return dequantize(quantize(latent, kv_lora_rank), kv_lora_rank, latent.dtype)
