"""Which implementation a flash_mla_with_kvcache call takes, and why (hf_flashmla.backend() tells).

"cuda_sm90": a CUDA device of compute capability 9.0 (Hopper) with the compiled extension hf_flashmla._C, and
    one latent KV head (h_kv = 1, every MLA model).
"triton": another CUDA device of compute capability >= 8.0, Hopper without the extension, or h_kv > 1
    (FlashMLA accepts grouped latent heads; the sm_90 kernel does not): hf_flashmla.triton_decode, where Triton
    imports.
"reference": everything else (hf_flashmla.reference), the CPU included.
An FP8 latent cache (is_fp8_kvcache) takes the same choice: the sm_90 kernel dequantizes its pages straight into
wgmma fragments for s_q * h_q <= 32 (csrc/mla_decode_fp8_narrow.cuh), in shared memory above that
(csrc/mla_decode_fp8_feed.cuh), the Triton kernel in registers; an extension built before the FP8 feed sends it
to Triton.
HF_FLASHMLA_BACKEND (hf_flashmla/envs.py) overrides the choice:
  unset / "auto"   choose as above;
  "reference"      always take the reference (e.g. to compare against the kernel);
  "cuda_sm90"      require the kernel: raise RuntimeError instead of silently falling back;
  "triton"         use the Triton kernel on any CUDA device (or on the CPU under TRITON_INTERPRET=1, for
                   tests); raise RuntimeError where it cannot run.
The choice is made once per (device, h_kv, FP8 or not, HF_FLASHMLA_BACKEND value) and cached: a call costs a
dictionary lookup, not a device query.
"""
from __future__ import annotations

import functools
import numbers
import os
from typing import NamedTuple

import torch

from hf_flashmla import _ops, envs, validation

KERNEL = "cuda_sm90"
REFERENCE = "reference"
TRITON = "triton"
KERNEL_CAPABILITY = (9, 0)
KERNEL_NUM_KV_HEADS = 1  # the compiled op's contract (hf_flashmla/_ops.py)
TRITON_MIN_CAPABILITY = (8, 0)  # bf16 tensor-core dots in Triton need Ampere or newer


class BackendChoice(NamedTuple):
    name: str  # KERNEL, TRITON or REFERENCE
    reason: str


@functools.lru_cache(maxsize=None)
def triton_import_error() -> str | None:
    """None if Triton imports, else why not (cached: the import is slow and its result fixed)."""
    try:
        import triton  # noqa: F401
    except Exception as error:  # Triton is optional
        return f"{type(error).__name__}: {error}"
    return None


def _triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def _unavailable(device: torch.device) -> ValueError:
    return ValueError(f"device_or_tensor: {device} is not available (torch.cuda.is_available() is False)")


def _device_of(device_or_tensor) -> torch.device:
    if device_or_tensor is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    if isinstance(device_or_tensor, torch.Tensor):
        return device_or_tensor.device
    if isinstance(device_or_tensor, bool) or not isinstance(device_or_tensor, (torch.device, str, int)):
        raise TypeError(f"device_or_tensor: expected a torch.device, a device string, an index or a tensor, got "
                        f"{validation.type_name(device_or_tensor)}")
    try:
        device = torch.device(device_or_tensor)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"device_or_tensor: not a device: {device_or_tensor!r} ({error})") from None
    if device.type == "cuda" and device.index is None:  # tensors always name their index: key the cache alike
        if not torch.cuda.is_available():
            raise _unavailable(device)
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _kernel_choice(device: torch.device, num_heads_k: int, fp8: bool = False) -> BackendChoice:
    """The sm_90 kernel, or the reference with the reason the kernel does not apply."""
    if device.type != "cuda":
        return BackendChoice(REFERENCE, f"device {device} is not a CUDA device")
    capability = torch.cuda.get_device_capability(device)
    if tuple(capability) != KERNEL_CAPABILITY:
        return BackendChoice(REFERENCE, f"device {device} has compute capability {capability[0]}.{capability[1]}, "
                                        f"the kernel needs sm_90 (Hopper)")
    if not _ops.extension_available():
        return BackendChoice(REFERENCE, f"the CUDA extension hf_flashmla._C is not built: {_ops.EXTENSION_ERROR}")
    if num_heads_k != KERNEL_NUM_KV_HEADS:
        return BackendChoice(REFERENCE, f"k_cache has h_kv = {num_heads_k}, the sm_90 kernel serves h_kv = "
                                        f"{KERNEL_NUM_KV_HEADS} only")
    if fp8 and not _ops.fp8_kernel_available():
        return BackendChoice(REFERENCE, "the k_cache is FP8 (is_fp8_kvcache), which this build of the CUDA extension "
                                        "does not read: rebuild it")
    return BackendChoice(KERNEL, f"device {device} is sm_90 and the CUDA extension is built")


def _automatic_choice(device: torch.device, num_heads_k: int, fp8: bool) -> BackendChoice:
    choice = _kernel_choice(device, num_heads_k, fp8)
    if choice.name == KERNEL or device.type != "cuda":
        return choice
    # A CUDA device where the sm_90 kernel does not apply: the portable Triton kernel if it can run.
    capability = tuple(torch.cuda.get_device_capability(device))
    if capability < TRITON_MIN_CAPABILITY:
        return BackendChoice(REFERENCE, f"{choice.reason}; the Triton kernel needs compute capability >= "
                                        f"{TRITON_MIN_CAPABILITY[0]}.{TRITON_MIN_CAPABILITY[1]}")
    error = triton_import_error()
    if error is not None:
        return BackendChoice(REFERENCE, f"{choice.reason}; Triton is not importable ({error})")
    return BackendChoice(TRITON, f"{choice.reason}; the Triton kernel runs instead")


def _choose(device: torch.device, num_heads_k: int, fp8: bool, forced_raw: str | None) -> BackendChoice:
    forced = envs.BACKEND.value(forced_raw)
    name = envs.BACKEND.name
    if forced == "auto":
        return _automatic_choice(device, num_heads_k, fp8)
    if forced == REFERENCE:
        return BackendChoice(REFERENCE, f"forced by {name}={REFERENCE}")
    if forced == KERNEL:
        choice = _kernel_choice(device, num_heads_k, fp8)
        if choice.name != KERNEL:
            raise RuntimeError(f"{name}={KERNEL} requires the kernel, but {choice.reason}")
        return BackendChoice(KERNEL, f"forced by {name}={KERNEL}; {choice.reason}")
    error = triton_import_error()  # forced == TRITON
    if error is not None:
        raise RuntimeError(f"{name}={TRITON} requires Triton, which is not importable: {error}")
    if device.type != "cuda" and not _triton_interpreter_on():
        raise RuntimeError(f"{name}={TRITON}: device {device} is not a CUDA device (Triton runs on the CPU only "
                           f"under TRITON_INTERPRET=1, for tests)")
    return BackendChoice(TRITON, f"forced by {name}={TRITON}")


# (device, h_kv, FP8, HF_FLASHMLA_BACKEND as set) -> BackendChoice. Errors are not cached: they raise every time.
_CHOICES: dict = {}


def choice_for(device: torch.device, num_heads_k: int = KERNEL_NUM_KV_HEADS, fp8: bool = False) -> BackendChoice:
    """backend() for a device as a tensor names it (with its index); what flash_mla_with_kvcache calls."""
    key = (device, num_heads_k, fp8, envs.BACKEND.raw())
    choice = _CHOICES.get(key)
    if choice is None:
        choice = _CHOICES[key] = _choose(device, num_heads_k, fp8, key[3])
    return choice


def backend(device_or_tensor=None, *, num_heads_k: int = KERNEL_NUM_KV_HEADS,
            is_fp8_kvcache: bool = False) -> BackendChoice:
    """Says which path flash_mla_with_kvcache takes for tensors on this device (default: the current CUDA
    device if there is one, else the CPU) with num_heads_k latent KV heads (k_cache's dim 2) and an FP8 cache or
    not, and why. Cached like the calls' own choice (the Transformers integration asks it at every layer)."""
    if isinstance(num_heads_k, bool) or not isinstance(num_heads_k, numbers.Integral):
        raise TypeError(f"num_heads_k: expected an int, got {validation.type_name(num_heads_k)}")
    if num_heads_k < 1:
        raise ValueError(f"num_heads_k: expected h_kv >= 1, got {num_heads_k}")
    if type(is_fp8_kvcache) is not bool:
        raise TypeError(f"is_fp8_kvcache: expected a bool, got {validation.type_name(is_fp8_kvcache)}")
    device = _device_of(device_or_tensor)
    try:
        return choice_for(device, int(num_heads_k), is_fp8_kvcache)
    except AssertionError as error:  # torch's own, where a CUDA query finds no CUDA in this build
        if device.type == "cuda" and not torch.cuda.is_available():
            raise _unavailable(device) from error
        raise


def forget_choices() -> None:
    """Drop the cached choices, for tests that change what a device offers (e.g. by monkeypatching)."""
    _CHOICES.clear()
