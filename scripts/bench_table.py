#!/usr/bin/env python3
"""Prints the README's performance table (equal-length rows of the main table) from a bench_kernel.py JSON.

    python3 scripts/bench_table.py notes/device_runs/58_bench.json
"""
import json
import sys


def best_ms(rows, impl):
    times = [r["ms"] for r in rows if r["impl"] == impl and r.get("ms") and r.get("ok") is not False]
    return min(times) if times else None


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def main(path):
    configs = json.load(open(path))["configs"]
    print("| b | L | s_q | h_q | ms | TFLOP/s | GB/s | SM MHz | FlashMLA ms | speed vs FlashMLA | FlashInfer ms "
          "| SGLang ms (best split) | our Triton ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        if c["group"] != "main" or c["varlen"]:
            continue
        ours = next((r for r in c["rows"] if r["impl"] == "ours" and r.get("ms")), None)
        if ours is None:
            continue
        figure = c.get("flashmla_figure")
        flashmla_ms = figure["flashmla_ms"] if figure else None
        ratio = flashmla_ms / ours["ms"] if flashmla_ms else None
        print(f"| {c['b']} | {c['mean_len']} | {c['s_q']} | {c['h_q']} | {ours['ms']:.3f} | {ours['tflops']:.0f} | "
              f"{ours['gbps']:.0f} | {fmt(ours.get('sm_mhz'), '.0f')} | {fmt(flashmla_ms, '')} | {fmt(ratio, '.2f')} | "
              f"{fmt(best_ms(c['rows'], 'flashinfer'), '.3f')} | {fmt(best_ms(c['rows'], 'sglang'), '.3f')} | "
              f"{fmt(best_ms(c['rows'], 'triton'), '.3f')} |")


if __name__ == "__main__":
    main(sys.argv[1])
