"""Per-step timestamps inside one generate() call, and timing of bare decode forwards.

generate() calls its logits processors once per forward pass: first after the prefill, then after every
decode step. StepClock is such a processor: it synchronises the device and records the time, so one
generate() call yields both the time to first token (start -> first call) and the decode steps alone
(first call -> last call), without a second prefill. The synchronisation costs nothing measurable: the
generate() loop already waits for the device every step when its stopping criteria read the
`unfinished_sequences` tensor.
"""
from __future__ import annotations

import time

import torch
from transformers import LogitsProcessor

from e2e_runtime import cache_kwarg, synchronize


class StepClock(LogitsProcessor):
    def __init__(self, device: torch.device, on_step=None):
        self.device = device
        self.on_step = on_step  # progress callback, called after the timestamp is taken
        self.start = None
        self.stamps = []

    def begin(self):
        synchronize(self.device)
        self.start = time.perf_counter()
        self.stamps = []

    def __call__(self, input_ids, scores):
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        if self.on_step is not None:
            self.on_step(len(self.stamps))
        return scores

    @property
    def ttft_s(self) -> float | None:
        return self.stamps[0] - self.start if self.stamps else None

    @property
    def decode_steps(self) -> int:
        return max(len(self.stamps) - 1, 0)

    @property
    def decode_s(self) -> float | None:
        return self.stamps[-1] - self.stamps[0] if len(self.stamps) > 1 else None


@torch.no_grad()
def time_bare_decode(model, cache, last_tokens, steps: int, device: torch.device) -> dict:
    """Times `steps` greedy decode forwards fed straight to the model (no generate() loop).

    Returns wall ms per step (one sync at the end, so host and device overlap as they would in a tight
    serving loop) and host ms per step (time for Python to issue a step; when it is close to the wall time
    the step is bound by kernel launches and Python, not by the GPU)."""
    key = cache_kwarg(model)
    tokens = last_tokens.reshape(-1, 1)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        logits = model(input_ids=tokens, use_cache=True, logits_to_keep=1, **{key: cache}).logits
        tokens = logits[:, -1].argmax(-1, keepdim=True)
    issued = time.perf_counter()
    synchronize(device)
    end = time.perf_counter()
    return {"fwd_ms_per_step": (end - start) * 1e3 / steps, "host_ms_per_step": (issued - start) * 1e3 / steps}
