"""Device diagnostic: where the run-to-run spread of the compute-bound s_q * h_q = 256 configs comes from. Times one
config with the benchmark's timer several times in one process, on the same inputs and on freshly allocated copies
(other physical pages, other random data), with the SM clock of each timing. Not a benchmark.

    python3 scripts/variance_probe.py [--config b128_L16384_sq2_h128] [--repeats 6] [--fresh 3] [--shift-mb 0]
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_monitor import GpuMonitor  # noqa: E402
from hf_flashmla import flash_mla_with_kvcache, get_mla_metadata  # noqa: E402
from scripts.kernel_breakdown import parse  # noqa: E402
from scripts.kernel_smoke import make_inputs  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="b128_L16384_sq2_h128")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--fresh", type=int, default=3, help="input sets allocated one after another")
    parser.add_argument("--shift-mb", type=int, default=0, help="allocate this much first (moves the inputs)")
    args = parser.parse_args()
    shift = torch.empty(args.shift_mb * 2**20, dtype=torch.uint8, device="cuda") if args.shift_mb else None  # noqa
    batch, length, s_q, h_q = parse(args.config)
    monitor = GpuMonitor.open(torch.device("cuda"))
    keep = []
    for fresh in range(args.fresh):
        q, k_cache, block_table, seqlens = make_inputs([length] * batch, s_q, h_q, torch.bfloat16)
        keep.append((q, k_cache))
        meta, splits = get_mla_metadata(seqlens, s_q * h_q, 1)
        call = lambda: flash_mla_with_kvcache(q, k_cache, block_table, seqlens, 512, meta, splits, causal=True)  # noqa
        times, clocks = [], []
        for _ in range(args.repeats):
            if monitor:
                monitor.start()
            times.append(do_bench(call, warmup=10, rep=40, return_mode="median") * 1e3)
            clocks.append(monitor.stop().get("sm_mhz") if monitor else None)
        print(f"{args.config} shift {args.shift_mb} MB, inputs {fresh} (k_cache at {k_cache.data_ptr() % 2**32:#x}): "
              f"us {' '.join(f'{t:.0f}' for t in times)} | median {statistics.median(times):.0f} | "
              f"MHz {' '.join(str(c) for c in clocks)}", flush=True)


if __name__ == "__main__":
    main()
