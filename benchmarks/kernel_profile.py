"""Per-kernel device times of one decode call, from torch.profiler's CUDA activity (bench_kernel --kernel-times).

A call's time is not the sum of its kernels: the combine is launched as a programmatic dependent of the decode kernel
(ours and FlashMLA's), so it starts while the decode kernel runs and ends some time after it. What the profile
reports per call, as medians over `calls` calls with L2 flushed before each:
  kernel_us  each kernel's own duration, by short name (the decode kernel's includes nothing of the combine's);
  span_us    from the call's first kernel start to its last kernel end (what the GPU spends on the call);
  tail_us    how long the call runs after its decode kernel ends: the first kernel named like one (decode,
             splitkv: ours and FlashMLA's), else the call's first kernel (a kernel launched before it, such as a
             workspace clear, would otherwise count the whole decode kernel as tail).
Each call is preceded by the flush and a synchronize, so a call's kernels are the ones that start after the flush's;
the flush's own kernels are counted once, alone, and skipped in each call.
"""
from __future__ import annotations

import re
import statistics

import torch

_TEMPLATE_OR_ARGS = re.compile(r"[<(].*$")
_DECODE_KERNEL = re.compile(r"decode|splitkv")


def short_name(kernel: str) -> str:
    """`void ns::detail::mla_combine_rows_kernel<__nv_bfloat16>(...)` -> `mla_combine_rows_kernel`."""
    name = _TEMPLATE_OR_ARGS.sub("", kernel.removeprefix("void ").strip())
    return name.rsplit("::", 1)[-1].strip() or kernel[:40]


def _device_kernels(prof) -> list[tuple[float, float, str]]:
    """(start us, end us, name) of every GPU activity in the trace, by start."""
    spans = []
    for event in prof.events():
        if getattr(event.device_type, "name", "") != "CUDA":
            continue
        spans.append((float(event.time_range.start), float(event.time_range.end), event.name))
    return sorted(spans)


def _profiled(run, count: int) -> list[tuple[float, float, str]]:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(count):
            run()
        torch.cuda.synchronize()
    return _device_kernels(prof)


def kernel_times(fn, flush: torch.Tensor, calls: int = 10) -> dict | None:
    """{"kernel_us": {name: us}, "span_us": us, "tail_us": us} of `fn`'s calls, or None off CUDA or where the
    trace does not split into `calls` equal calls (a profiler without CUDA activity, a call whose kernels vary)."""
    if flush.device.type != "cuda":
        return None

    def flush_only():
        flush.zero_()
        torch.cuda.synchronize()

    def flushed_call():
        flush_only()
        fn()

    fn()
    torch.cuda.synchronize()
    per_flush = len(_profiled(flush_only, calls)) // calls
    kernels = _profiled(flushed_call, calls)
    if not kernels or len(kernels) % calls:
        return None
    per_call = len(kernels) // calls - per_flush
    if per_call < 1:
        return None
    durations: dict[str, list[float]] = {}
    spans, tails = [], []
    for i in range(calls):
        own = kernels[i * (per_flush + per_call) + per_flush:(i + 1) * (per_flush + per_call)]
        for start, end, name in own:
            durations.setdefault(short_name(name), []).append(end - start)
        last_end = max(end for _, end, _ in own)
        spans.append(last_end - own[0][0])
        decode = next((kernel for kernel in own if _DECODE_KERNEL.search(short_name(kernel[2]))), own[0])
        tails.append(last_end - decode[1])
    return {"kernel_us": {name: statistics.median(values) for name, values in durations.items()},
            "span_us": statistics.median(spans), "tail_us": statistics.median(tails)}


def describe(times: dict | None) -> str:
    """One line for the log: each kernel's us, then the span and the tail."""
    if not times:
        return "kernel times: not measured"
    kernels = ", ".join(f"{name} {us:.1f}" for name, us in times["kernel_us"].items())
    return f"kernels (us): {kernels}; span {times['span_us']:.1f}, after the decode kernel {times['tail_us']:.1f}"
