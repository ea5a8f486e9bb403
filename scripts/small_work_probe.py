"""Device diagnostic: where the time of small decode workloads goes (the extra workloads of BENCHMARKS.md, where
published peers beat FlashMLA), and how it moves when the schedule uses fewer parts (fewer, longer splits:
less partial traffic and combine work, less parallelism). Per config and part count: the flushed median time
of the benchmark protocol, back-to-back time, and GPU time per kernel (the combine's includes its wait for the
decode grid unless HF_FLASHMLA_PDL=0). Not a benchmark.

    python3 scripts/small_work_probe.py [--sms 132,99,66,44] [--configs uneven_b4_sq4_h16,b1_L4096_sq1_h16] [--pad]

--pad also times each smaller schedule padded with empty parts to the first --sms value's grid: the same work as
a device-side rule would leave it (the metadata's shape is fixed on the host), against the smaller grid.
--layouts default,packed,spread,tail also times each schedule with its rows permuted (the kernel reads row p in the
CTAs of part p, and rows are independent): the parts with work first (packed), evenly spread over the grid, or
last: whether where the busy CTAs sit on the GPU matters.

Configs: the names below, or any equal-length main-table-style name bB_LL_sqS_hH (e.g. b1_L4096_sq1_h128).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hf_flashmla import schedule  # noqa: E402
from hf_flashmla.latent_cache import pages_for  # noqa: E402
from scripts.bench_kernel import flushed_event_median_ms  # noqa: E402
from scripts.kernel_breakdown import back_to_back_us, gpu_us_per_kernel, parse, short_kernel_names  # noqa: E402
from scripts.kernel_smoke import decode_call, make_inputs  # noqa: E402

# name: (lengths, s_q, h_q)
CONFIGS = {
    "uneven_b4_sq4_h16": ([4641, 45118, 1730, 1696], 4, 16),
    "b128_1K_sq1_h16": ([1024] * 128, 1, 16),
    "b16_sq16_1K_h16": ([1024] * 16, 16, 16),
    "b64_L4096_sq1_h16": ([4096] * 64, 1, 16),
}


def config_of(name):
    """(lengths, s_q, h_q) of a named extra workload or of an equal-length bB_LL_sqS_hH name."""
    if name in CONFIGS:
        return CONFIGS[name]
    batch, length, s_q, h_q = parse(name)
    return [length] * batch, s_q, h_q


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--sms", default="132,99,66,44")
    parser.add_argument("--pad", action="store_true")
    parser.add_argument("--layouts", default="default")
    args = parser.parse_args()
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    for name in args.configs.split(","):
        lengths, s_q, h_q = config_of(name)
        q, k_cache, block_table, seqlens = make_inputs(lengths, s_q, h_q, torch.bfloat16)
        sms_values = [int(n) for n in args.sms.split(",")]
        full_parts = schedule.num_sm_parts_for(s_q * h_q, 1, sms_values[0])
        for num_sms in sms_values:
            meta, splits = schedule.compute_schedule(seqlens, s_q * h_q, 1, num_sms=num_sms)
            variants = [("" if layout == "default" else f" {layout}", with_layout(meta, seqlens, layout))
                        for layout in args.layouts.split(",")]
            if args.pad and meta.shape[0] < full_parts:
                variants.append((" padded", pad_with_empty_parts(meta, seqlens, full_parts)))
            for label, rows in variants:
                call = decode_call(q, k_cache, block_table, seqlens, rows, splits)
                for _ in range(5):
                    call()
                flushed = flushed_event_median_ms(call, flush, 100) * 1e3
                warm = back_to_back_us(call, 50)
                kernels = short_kernel_names(gpu_us_per_kernel(call))
                print(f"{name:20s} sms {num_sms:3d}{label:8s}: parts {rows.shape[0]:3d}, splits {int(splits[-1]):3d} | "
                      f"flushed {flushed:6.1f} us, back-to-back {warm:6.1f} us | GPU us/call: {kernels}", flush=True)


def with_layout(meta, seqlens, layout):
    """meta's rows permuted: default (as scheduled), packed (rows with pages first), spread (those evenly over the
    grid), tail (those last)."""
    if layout == "default":
        return meta
    num_blocks = [pages_for(max(n, 0)) for n in seqlens.tolist()]
    rows = meta.cpu()
    busy = [p for p in range(rows.shape[0]) if any(True for _ in schedule.iterate_part(rows[p], num_blocks))]
    busy_set = set(busy)
    idle = [p for p in range(rows.shape[0]) if p not in busy_set]
    if layout == "packed":
        order = busy + idle
    elif layout == "tail":
        order = idle + busy
    elif layout == "spread":
        slots = {i * rows.shape[0] // len(busy): p for i, p in enumerate(busy)} if busy else {}
        spare = iter(idle)
        order = [slots[i] if i in slots else next(spare) for i in range(rows.shape[0])]
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return meta[torch.tensor(order, device=meta.device)]


def pad_with_empty_parts(meta, seqlens, num_parts):
    """meta with rows appended up to num_parts, each empty as the schedule's spare parts are: the last sequence from
    its last page to its last page."""
    last = len(seqlens) - 1
    last_page = pages_for(max(int(seqlens[last]), 0))
    spare = torch.tensor([last, last_page, last, last_page, 0, 0, 0, 0], dtype=meta.dtype, device=meta.device)
    return torch.cat([meta, spare.expand(num_parts - meta.shape[0], -1)])


if __name__ == "__main__":
    main()
