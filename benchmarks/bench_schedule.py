"""Time per get_mla_metadata call: the PyTorch-ops schedule against the single-CTA schedule kernel.

    python -m benchmarks.bench_schedule [--batches 1 8 32 128 1024] [--rows 128] [--max-len 32768] [--reps 200]

Per batch size (random lengths in [1, max_len]; rows = s_q * h_q / h_kv), both paths through
hf_flashmla.schedule.compute_schedule. Printed per path, medians over the repeats:
  gpu_us   CUDA events around one call with the GPU idle before it (what a decode step waits for: host
           launch work + kernels);
  host_us  CPU time spent in the call (the host cost in a launch-bound generate() loop).
Each kernel result is checked against the PyTorch one (bit for bit).
"""
import argparse
import statistics
import sys
import time

import torch

from hf_flashmla import schedule


def time_calls(fn, reps):
    gpu, host = [], []
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        end.record()
        end.synchronize()
        gpu.append(start.elapsed_time(end) * 1e3)
        host.append((t1 - t0) * 1e6)
    return statistics.median(gpu), statistics.median(host)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128, 1024])
    parser.add_argument("--rows", type=int, default=128, help="s_q * h_q / h_kv (default 128)")
    parser.add_argument("--max-len", type=int, default=32768)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_schedule: needs a CUDA device")

    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, rows {args.rows}, "
          f"parts {schedule.num_sm_parts_for(args.rows, 1, schedule.num_sms_of(device))}, "
          f"kernel available: {schedule.schedule_implementation(device) == schedule.KERNEL}")
    print(f"{'b':>6} {'torch gpu_us':>13} {'kernel gpu_us':>14} {'speedup':>8} {'torch host_us':>14} "
          f"{'kernel host_us':>15} {'identical':>10}")
    generator = torch.Generator().manual_seed(0)
    for batch in args.batches:
        lengths = torch.randint(1, args.max_len + 1, (batch,), generator=generator, dtype=torch.int32).to(device)
        results = {}
        for impl in (schedule.TORCH, schedule.KERNEL):
            def call(impl=impl):
                return schedule.compute_schedule(lengths, args.rows, 1, implementation=impl)
            results[impl] = (call(),) + time_calls(call, args.reps)
        (torch_out, torch_gpu, torch_host), (kernel_out, kernel_gpu, kernel_host) = results.values()
        same = all(torch.equal(a, b) for a, b in zip(torch_out, kernel_out))
        print(f"{batch:>6} {torch_gpu:>13.1f} {kernel_gpu:>14.1f} {torch_gpu / kernel_gpu:>7.1f}x {torch_host:>14.1f} "
              f"{kernel_host:>15.1f} {str(same):>10}")


if __name__ == "__main__":
    main()
