"""Where one decode call's time goes: GPU time per kernel (decode, combine, schedule) from the PyTorch
profiler, next to the call's wall time, for a few configs. Device-only; a diagnostic, not a benchmark.
The combine kernel is launched as a programmatic dependent of the decode kernel, so its GPU time here includes
its wait for the decode grid (run 73: 220 us at b128 L8K s2 h128); HF_FLASHMLA_PDL=0 times the two apart.

    python3 scripts/kernel_breakdown.py [--configs b64_L4096_sq1_h16,b128_L16384_sq2_h128]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hf_flashmla import schedule  # noqa: E402
from scripts.kernel_smoke import decode_call, make_inputs  # noqa: E402

DEFAULT = "b64_L4096_sq1_h16,b64_L16384_sq1_h16,b128_L4096_sq1_h16,b128_L16384_sq1_h128,b128_L16384_sq2_h128"


def parse(name):
    fields = dict((f[0], f[1:]) for f in name.replace("sq", "s").split("_"))
    return int(fields["b"]), int(fields["L"]), int(fields["s"]), int(fields["h"])


def gpu_us_per_kernel(call, iters=20):
    """{kernel name: GPU us per call} of `iters` back-to-back calls, from the PyTorch profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            call()
        torch.cuda.synchronize()
    return {event.key: event.device_time_total / iters for event in prof.key_averages()
            if event.device_type == torch.autograd.DeviceType.CUDA}


def short_kernel_names(per_kernel):
    return ", ".join(f"{k.split('<')[0].split('(')[0][-28:]} {v:.1f}" for k, v in
                     sorted(per_kernel.items(), key=lambda kv: -kv[1]))


def warm_call(lengths, s_q, h_q):
    """(call, meta, splits): the compiled op on random inputs under get_mla_metadata's schedule, warmed up."""
    q, k_cache, block_table, seqlens = make_inputs(lengths, s_q, h_q, torch.bfloat16)
    meta, splits = schedule.compute_schedule(seqlens, s_q * h_q, 1)
    call = decode_call(q, k_cache, block_table, seqlens, meta, splits)
    for _ in range(5):
        call()
    torch.cuda.synchronize()
    return call, meta, splits


def named_call(name):
    """warm_call for a main-table name such as b128_L8192_sq2_h128 (equal lengths)."""
    batch, length, s_q, h_q = parse(name)
    return warm_call([length] * batch, s_q, h_q)


def back_to_back_us(call, iters=20):
    """GPU time per call of `iters` calls in a row (CUDA events around them all)."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        call()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) * 1e3 / iters


def breakdown(name, iters=20):
    call, meta, splits = named_call(name)
    wall_us = back_to_back_us(call, iters)
    parts = short_kernel_names(gpu_us_per_kernel(call, iters))
    print(f"{name:26s} back-to-back {wall_us:8.1f} us/call | GPU us/call: {parts} | parts {meta.shape[0]}, "
          f"splits {int(splits[-1])} for {splits.shape[0] - 1} sequences")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default=DEFAULT)
    args = parser.parse_args()
    for name in args.configs.split(","):
        breakdown(name)


if __name__ == "__main__":
    main()
