"""Timing inside one generate() call: per-step timestamps, and the GPU's busy time over the decode steps.

generate() calls its logits processors once per forward pass: first after the prefill, then after every decode
step. StepClock is such a processor: at its first call it synchronises the device and records the time (the time
to first token, start -> first call); the decode steps are timed from there to the end of the generate() call,
synchronised (finish()). It does not synchronise at later calls: where generate() lets the host run a step ahead
of the device (flash_mla's graph decoding reads the stop flag one step late), a per-step synchronisation would
take that overlap away and time something users never run.

For the GPU busy time, a StepClock with a marker records a zero-length profiler range at its first call, after the
prefill's kernels have finished; the sum of the durations of the device events (kernels, copies, sets) that start
after it, divided by the decode steps, is the GPU time of one decode step. Concurrent kernels would be counted
twice; the decode step runs on one stream.
"""
from __future__ import annotations

import time

import torch
from transformers import LogitsProcessor

DECODE_MARKER = "hf_flashmla_bench::decode_start"


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock(LogitsProcessor):
    def __init__(self, device: torch.device, marker: str | None = None):
        self.device = device
        self.marker = marker  # profiler range recorded at the first call (the end of the prefill)
        self.start = None
        self.end = None
        self.stamps = []

    def begin(self):
        synchronize(self.device)
        self.start = time.perf_counter()
        self.end = None
        self.stamps = []

    def finish(self):
        """At the end of the generate() call: waits for the device and records the end of the decode steps."""
        synchronize(self.device)
        self.end = time.perf_counter()

    def __call__(self, input_ids, scores):
        if not self.stamps:
            synchronize(self.device)
        self.stamps.append(time.perf_counter())
        if self.marker is not None and len(self.stamps) == 1:
            with torch.profiler.record_function(self.marker):
                pass
        return scores

    @property
    def ttft_s(self) -> float | None:
        return self.stamps[0] - self.start if self.stamps else None

    @property
    def decode_steps(self) -> int:
        return max(len(self.stamps) - 1, 0)

    @property
    def decode_s(self) -> float | None:
        if len(self.stamps) < 2:
            return None
        return (self.end if self.end is not None else self.stamps[-1]) - self.stamps[0]


def device_busy_after(events, marker: str, device_type) -> tuple[float | None, int]:
    """(summed duration in ms of the `device_type` events that start after the `marker` range, their count) from a
    profiler's event list; (None, 0) when the marker is missing."""
    starts = [e.time_range.start for e in events if e.name == marker]
    if not starts:
        return None, 0
    after = [e for e in events if e.device_type == device_type and e.time_range.start >= starts[0]]
    return sum(e.time_range.elapsed_us() for e in after) / 1e3, len(after)


def device_span_after(events, marker: str, device_type) -> float | None:
    """ms from the first `device_type` event that starts after the `marker` range to the end of the last one."""
    starts = [e.time_range.start for e in events if e.name == marker]
    after = [e for e in events if starts and e.device_type == device_type and e.time_range.start >= starts[0]]
    if not after:
        return None
    return (max(e.time_range.end for e in after) - min(e.time_range.start for e in after)) / 1e3


def profiled_decode_busy(generate, device: torch.device) -> dict:
    """Runs `generate(clock)` (a generate() call with `clock` among its logits processors) under torch.profiler and
    returns the GPU busy ms per decode step and the number of device events counted. CUDA only."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    clock = StepClock(device, marker=DECODE_MARKER)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        clock.begin()
        generate(clock)
        synchronize(device)
    busy_ms, events = device_busy_after(prof.events(), DECODE_MARKER, DeviceType.CUDA)
    span_ms = device_span_after(prof.events(), DECODE_MARKER, DeviceType.CUDA)
    steps = clock.decode_steps

    def per_step(value):
        return value / steps if value is not None and steps else None

    # span - busy = the device's idle time between the decode steps' events: launch gaps inside a replayed graph
    # and waits on the host; kernels per step says how many launches share it.
    return {"gpu_busy_ms_per_step": per_step(busy_ms), "gpu_busy_device_events": events,
            "gpu_span_ms_per_step": per_step(span_ms), "gpu_events_per_step": per_step(events or None)}
