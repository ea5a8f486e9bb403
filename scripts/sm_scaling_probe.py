"""Device diagnostic: is the decode kernel bound per SM or by something all SMs share (L2 bandwidth, HBM, power)?
Runs the same per-CTA work (whole equal-length sequences, `per_part` of them per part, no splits) on fewer and
fewer parts of the tile schedule, i.e. fewer busy SMs, and prints the time per page-tile of one CTA with the SM
clock. Flat across the rows: each SM is its own limit. Falling as SMs go idle: a shared resource is.
The aggregate L2->SM rate (every CTA reads each of its pages whole) is printed next to it. Not a benchmark.

    python3 scripts/sm_scaling_probe.py [--length 8192] [--per-part 4]
"""
import argparse
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_monitor import GpuMonitor  # noqa: E402
from hf_flashmla import schedule  # noqa: E402
from scripts.kernel_smoke import decode_call, make_inputs  # noqa: E402

PAGE_BYTES = 64 * 576 * 2
# (s_q, h_q): one, two and four m-block CTAs reading each page.
SHAPES = ((1, 64), (1, 128), (2, 128))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--per-part", type=int, default=4, help="whole sequences per part")
    parser.add_argument("--fractions", default="1,0.75,0.5,0.25,0.125")
    args = parser.parse_args()
    monitor = GpuMonitor.open(torch.device("cuda"))
    total_sms = torch.cuda.get_device_properties(0).multi_processor_count
    pages = -(-args.length // 64)
    for s_q, h_q in SHAPES:
        m_blocks = -(-(s_q * h_q) // 64)
        full_parts = total_sms // m_blocks
        for fraction in (float(f) for f in args.fractions.split(",")):
            parts = max(1, round(full_parts * fraction))
            batch = parts * args.per_part
            q, k_cache, block_table, seqlens = make_inputs([args.length] * batch, s_q, h_q, torch.bfloat16)
            meta, splits = schedule.compute_schedule(seqlens, s_q * h_q, 1, num_sms=parts * m_blocks)
            assert meta.shape[0] == parts and int(splits[-1]) == batch, "expected whole sequences, no splits"
            call = decode_call(q, k_cache, block_table, seqlens, meta, splits)
            if monitor:
                monitor.start()
            us = do_bench(call, warmup=10, rep=40, return_mode="median") * 1e3
            stats = monitor.stop() if monitor else {}
            tiles = args.per_part * pages
            ctas = parts * m_blocks
            rate = ctas * tiles * PAGE_BYTES / (us * 1e-6) / 1e12
            print(f"s_q {s_q} h_q {h_q}: {ctas:3d} CTAs ({parts} parts x {m_blocks}), b {batch}: {us:8.1f} us, "
                  f"{us / tiles:.3f} us per page-tile, L2->SM {rate:.2f} TB/s, HBM {rate / m_blocks:.2f} TB/s, "
                  f"{stats.get('sm_mhz')} MHz {stats.get('power_w')} W", flush=True)
            del q, k_cache, block_table, seqlens


if __name__ == "__main__":
    main()
