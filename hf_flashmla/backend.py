"""Which implementation a call takes, and why.

"cuda_sm90": the tensors live on a CUDA device of compute capability 9.0 (Hopper) and the compiled
extension hf_flashmla._C is importable. "reference": everything else (hf_flashmla.reference).
HF_FLASHMLA_BACKEND overrides the choice:
  unset / "auto"   choose as above;
  "reference"      always take the reference (e.g. to compare against the kernel);
  "cuda_sm90"      require the kernel: raise RuntimeError instead of silently falling back.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch

from hf_flashmla import _ops

BACKEND_ENV_VAR = "HF_FLASHMLA_BACKEND"
KERNEL = "cuda_sm90"
REFERENCE = "reference"
KERNEL_CAPABILITY = (9, 0)


class BackendChoice(NamedTuple):
    name: str  # KERNEL or REFERENCE
    reason: str


def _device_of(device_or_tensor) -> torch.device:
    if device_or_tensor is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    if isinstance(device_or_tensor, torch.Tensor):
        return device_or_tensor.device
    return torch.device(device_or_tensor)


def _automatic_choice(device: torch.device) -> BackendChoice:
    if device.type != "cuda":
        return BackendChoice(REFERENCE, f"device {device} is not a CUDA device")
    capability = torch.cuda.get_device_capability(device)
    if tuple(capability) != KERNEL_CAPABILITY:
        return BackendChoice(REFERENCE, f"device {device} has compute capability {capability[0]}.{capability[1]}, "
                                        f"the kernel needs sm_90 (Hopper)")
    if not _ops.extension_available():
        return BackendChoice(REFERENCE, f"the CUDA extension hf_flashmla._C is not built: {_ops.EXTENSION_ERROR}")
    return BackendChoice(KERNEL, f"device {device} is sm_90 and the CUDA extension is built")


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
        choice = _automatic_choice(device)
        if choice.name != KERNEL:
            raise RuntimeError(f"{BACKEND_ENV_VAR}={KERNEL} requires the kernel, but {choice.reason}")
        return BackendChoice(KERNEL, f"forced by {BACKEND_ENV_VAR}={KERNEL}; {choice.reason}")
    raise ValueError(f"{BACKEND_ENV_VAR}: expected one of 'auto', '{REFERENCE}', '{KERNEL}', got {forced!r}")
