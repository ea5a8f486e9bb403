"""Device diagnostic: what the GPU's clock and power do while one decode config runs back to back, and how its
time differs between back-to-back calls and the benchmark protocol (L2 flushed before each call). Compute-bound
configs move by several per cent between device calls; this says whether the SM clock (power or thermal limits)
is what moves (run 52: the 700 W cap under sustained load). Not a benchmark.

    python3 scripts/clock_probe.py [--configs b128_L8192_sq2_h128,...] [--seconds 3]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_kernel import flushed_event_median_ms  # noqa: E402
from gpu_monitor import GpuMonitor  # noqa: E402
from scripts.kernel_breakdown import named_call  # noqa: E402

DEFAULT = "b128_L8192_sq2_h128,b128_L16384_sq2_h128,b128_L16384_sq1_h128,b64_L8192_sq2_h128,b128_L16384_sq1_h16"


def timed_loop(call, seconds):
    """Back-to-back calls for `seconds`; GPU time per call from events around blocks of 20 calls."""
    per_call = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            call()
        stop.record()
        stop.synchronize()
        per_call.append(start.elapsed_time(stop) * 1e3 / 20)
    return per_call


def flushed_median(call, flush, repeats=100):
    """The benchmark protocol's flushed timing, in us."""
    return flushed_event_median_ms(call, flush, repeats) * 1e3


def probe(name, seconds, monitor, flush):
    call, _, _ = named_call(name)
    flushed_before = flushed_median(call, flush)
    monitor.start()
    per_call = timed_loop(call, seconds)
    gpu = monitor.stop()
    flushed_after = flushed_median(call, flush)
    half = len(per_call) // 2
    print(f"{name:24s} back-to-back us/call: first half {statistics.median(per_call[:half] or per_call):7.1f}, "
          f"second half {statistics.median(per_call[half:]):7.1f} | flushed (benchmark protocol) before "
          f"{flushed_before:7.1f} after {flushed_after:7.1f} | SM clock median {gpu.get('sm_mhz', 0):.0f} MHz "
          f"(min {gpu.get('min_sm_mhz', 0):.0f}), power {gpu.get('power_w', 0):.0f} W, temp "
          f"{gpu.get('max_temp_c', 0)} C, limits {gpu.get('limits', '?')}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default=DEFAULT)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    monitor = GpuMonitor.open(torch.device("cuda"))
    if monitor is None:
        sys.exit("clock_probe: NVML (libnvidia-ml.so.1) is not usable here")
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    idle = monitor.sample()
    print(f"idle: SM clock {idle[0]} MHz, power {idle[1]:.0f} W, temp {idle[3]} C")
    for name in args.configs.split(","):
        probe(name, args.seconds, monitor, flush)


if __name__ == "__main__":
    main()
