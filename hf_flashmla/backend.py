"""Which implementation a call takes, and why.

"cuda_sm90": the tensors live on a CUDA device of compute capability 9.0 (Hopper) and the compiled
extension hf_flashmla._C is importable. "triton": another CUDA device of compute capability >= 8.0
(or Hopper without the extension) with Triton importable (hf_flashmla.triton_decode).
"reference": everything else (hf_flashmla.reference).
HF_FLASHMLA_BACKEND overrides the choice:
  unset / "auto"   choose as above;
  "reference"      always take the reference (e.g. to compare against the kernel);
  "cuda_sm90"      require the kernel: raise RuntimeError instead of silently falling back;
  "triton"         use the Triton kernel on any CUDA device (or on the CPU under TRITON_INTERPRET=1, for
                   tests); raise RuntimeError where it cannot run.
"""
from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch

from hf_flashmla import _ops

BACKEND_ENV_VAR = "HF_FLASHMLA_BACKEND"
KERNEL = "cuda_sm90"
REFERENCE = "reference"
TRITON = "triton"
KERNEL_CAPABILITY = (9, 0)
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


def _device_of(device_or_tensor) -> torch.device:
    if device_or_tensor is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    if isinstance(device_or_tensor, torch.Tensor):
        return device_or_tensor.device
    return torch.device(device_or_tensor)


def _kernel_choice(device: torch.device) -> BackendChoice:
    """The sm_90 kernel, or the reference with the reason the kernel does not apply."""
    if device.type != "cuda":
        return BackendChoice(REFERENCE, f"device {device} is not a CUDA device")
    capability = torch.cuda.get_device_capability(device)
    if tuple(capability) != KERNEL_CAPABILITY:
        return BackendChoice(REFERENCE, f"device {device} has compute capability {capability[0]}.{capability[1]}, "
                                        f"the kernel needs sm_90 (Hopper)")
    if not _ops.extension_available():
        return BackendChoice(REFERENCE, f"the CUDA extension hf_flashmla._C is not built: {_ops.EXTENSION_ERROR}")
    return BackendChoice(KERNEL, f"device {device} is sm_90 and the CUDA extension is built")


def _automatic_choice(device: torch.device) -> BackendChoice:
    choice = _kernel_choice(device)
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


def backend(device_or_tensor=None) -> BackendChoice:
    """Says which path flash_mla_with_kvcache takes for tensors on this device (default: the current
    CUDA device if there is one, else the CPU) and why."""
    device = _device_of(device_or_tensor)
    forced = os.environ.get(BACKEND_ENV_VAR, "").strip().lower()
    if forced in ("", "auto"):
        return _automatic_choice(device)
    if forced == REFERENCE:
        return BackendChoice(REFERENCE, f"forced by {BACKEND_ENV_VAR}={REFERENCE}")
    if forced == KERNEL:
        choice = _kernel_choice(device)
        if choice.name != KERNEL:
            raise RuntimeError(f"{BACKEND_ENV_VAR}={KERNEL} requires the kernel, but {choice.reason}")
        return BackendChoice(KERNEL, f"forced by {BACKEND_ENV_VAR}={KERNEL}; {choice.reason}")
    if forced == TRITON:
        error = triton_import_error()
        if error is not None:
            raise RuntimeError(f"{BACKEND_ENV_VAR}={TRITON} requires Triton, which is not importable: {error}")
        if device.type != "cuda" and not _triton_interpreter_on():
            raise RuntimeError(f"{BACKEND_ENV_VAR}={TRITON}: device {device} is not a CUDA device (Triton runs "
                               f"on the CPU only under TRITON_INTERPRET=1, for tests)")
        return BackendChoice(TRITON, f"forced by {BACKEND_ENV_VAR}={TRITON}")
    raise ValueError(f"{BACKEND_ENV_VAR}: expected one of 'auto', '{REFERENCE}', '{KERNEL}', '{TRITON}', "
                     f"got {forced!r}")
