#!/usr/bin/env python3
"""Compares benchmark runs (JSON from scripts/bench_kernel.py) of our kernel: geomean speed ratio vs FlashMLA's
figures per group (memory-bound h_q*s_q <= 32, 64, compute-bound >= 128, all) for each run, and per config the
time of each run relative to the first. For A/B runs made in one device call.

    python3 scripts/compare_bench.py A=run_a.json B=run_b.json [--configs]
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def load(path):
    rows = {}
    for c in json.load(open(path))["configs"]:
        ours = [r for r in c["rows"] if r["impl"] == "ours" and r.get("ok")]
        if ours:
            rows[c["name"]] = (c, ours[0]["ms"])
    return rows


def group_of(c):
    from bench_kernel import COMPUTE_BOUND_MIN_ROWS, MEMORY_BOUND_MAX_ROWS  # noqa: E402
    rows = c["h_q"] * c["s_q"]
    return "memory" if rows <= MEMORY_BOUND_MAX_ROWS else ("compute" if rows >= COMPUTE_BOUND_MIN_ROWS else "64")


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", help="LABEL=path.json")
    parser.add_argument("--configs", action="store_true", help="also print every config")
    args = parser.parse_args()
    runs = [(r.split("=", 1)[0], load(r.split("=", 1)[1])) for r in args.runs]
    from bench_kernel import figure_for, load_figures  # noqa: E402
    figs, _ = load_figures()
    print(f"{'run':<10}" + "".join(f"{g:>10}" for g in ("memory", "64", "compute", "all")) + "   (geomean vs FlashMLA)")
    for label, rows in runs:
        ratios = {}
        for name, (c, ms) in rows.items():
            fig = figure_for(c, figs)
            if fig:
                ratios.setdefault(group_of(c), []).append(fig["flashmla_ms"] / ms)
        every = [v for vs in ratios.values() for v in vs]
        print(f"{label:<10}" + "".join(f"{geomean(ratios.get(g, [])):>10.4f}" for g in ("memory", "64", "compute"))
              + f"{geomean(every):>10.4f}")
    if args.configs:
        base_label, base = runs[0]
        print(f"\n{'config':<34}{base_label + ' us':>10}" + "".join(f"{label + '/' + base_label:>12}" for label, _ in runs[1:]))
        for name, (c, ms) in base.items():
            print(f"{name:<34}{ms * 1e3:>10.1f}" + "".join(
                f"{rows[name][1] / ms:>12.3f}" if name in rows else f"{'-':>12}" for _, rows in runs[1:]))


if __name__ == "__main__":
    main()
