"""Device diagnostic: what the GPU's clock and power do while one decode config runs, and how its time differs
between back-to-back calls and the benchmark protocol (L2 flushed before each call). Compute-bound configs
move by several per cent between device calls; this says whether the SM clock (power or thermal limits)
is what moves. Not a benchmark.

    python3 scripts/clock_probe.py [--configs b128_L8192_sq2_h128,...] [--seconds 3]
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hf_flashmla import _ops, schedule  # noqa: E402
from scripts.kernel_breakdown import parse  # noqa: E402
from scripts.kernel_smoke import make_inputs  # noqa: E402

DEFAULT = "b128_L8192_sq2_h128,b128_L16384_sq2_h128,b128_L16384_sq1_h128,b64_L8192_sq2_h128,b128_L16384_sq1_h16"
QUERY = "timestamp,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu,clocks_throttle_reasons.active"
# Bits of clocks_throttle_reasons.active (nvidia-smi --help-query-gpu).
REASONS = {0x1: "idle", 0x2: "app-clocks", 0x4: "sw-power-cap", 0x8: "hw-slowdown", 0x20: "sw-thermal",
           0x40: "hw-thermal", 0x80: "hw-power-brake", 0x100: "display-clocks"}


def reasons_of(mask):
    return "+".join(name for bit, name in REASONS.items() if mask & bit) or "none"


class Sampler:
    """nvidia-smi in the background, one CSV line per 100 ms, with the host time each line was read."""

    def __init__(self):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".csv", delete=False)
        self.proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
                                      "-lms", "100"], stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def lines(self):
        self.log.flush()
        return Path(self.log.name).read_text().splitlines()

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def parse_sample(line):
    fields = [f.strip() for f in line.split(",")]
    try:
        return dict(clock=float(fields[1]), max_clock=float(fields[2]), power=float(fields[3]),
                    limit=float(fields[4]), temp=float(fields[5]), reasons=int(fields[6], 16))
    except (ValueError, IndexError):
        return None


def timed_loop(call, seconds):
    """Back-to-back calls for `seconds`; GPU time per call from events around blocks of calls."""
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
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    stops = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for i in range(repeats):
        flush.zero_()
        starts[i].record()
        call()
        stops[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) * 1e3 for s, e in zip(starts, stops))


def probe(name, seconds, sampler, flush):
    batch, length, s_q, h_q = parse(name)
    q, k_cache, block_table, seqlens = make_inputs([length] * batch, s_q, h_q, torch.bfloat16)
    meta, splits = schedule.compute_schedule(seqlens, s_q * h_q, 1)
    call = lambda: _ops.mla_decode(q, k_cache, block_table, seqlens, meta, splits, 576 ** -0.5, True, 512)  # noqa
    for _ in range(5):
        call()
    torch.cuda.synchronize()
    flushed_before = flushed_median(call, flush)
    seen = len(sampler.lines())
    per_call = timed_loop(call, seconds)
    samples = [s for s in map(parse_sample, sampler.lines()[seen:]) if s is not None]
    flushed_after = flushed_median(call, flush)
    mask = 0
    for s in samples:
        mask |= s["reasons"]
    if samples:
        clocks = [s["clock"] for s in samples]
        gpu = (f"SM clock median {statistics.median(clocks):.0f} MHz (min {min(clocks):.0f}, max clock "
               f"{samples[0]['max_clock']:.0f}), power median {statistics.median(s['power'] for s in samples):.0f} W "
               f"of {samples[0]['limit']:.0f}, temp {max(s['temp'] for s in samples):.0f} C, reasons {reasons_of(mask)}")
    else:
        gpu = "no nvidia-smi samples: " + " | ".join(sampler.lines()[-2:])
    half = len(per_call) // 2
    print(f"{name:24s} back-to-back us/call: first half {statistics.median(per_call[:half] or per_call):7.1f}, "
          f"second half {statistics.median(per_call[half:]):7.1f} | flushed (benchmark protocol) before "
          f"{flushed_before:7.1f} after {flushed_after:7.1f} | {gpu}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default=DEFAULT)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    sampler = Sampler()
    try:
        time.sleep(0.5)
        idle = [s for s in map(parse_sample, sampler.lines()) if s is not None]
        if idle:
            print(f"idle: SM clock {idle[-1]['clock']:.0f} MHz, power {idle[-1]['power']:.0f} W, "
                  f"reasons {reasons_of(idle[-1]['reasons'])}")
        for name in args.configs.split(","):
            probe(name, args.seconds, sampler, flush)
    finally:
        sampler.stop()


if __name__ == "__main__":
    main()
