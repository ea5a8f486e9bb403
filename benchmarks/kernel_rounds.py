"""Merge repeated passes of bench_kernel.py over the same configs into one result per config.

Why: on the device H100 the compute-bound configs move 3-5% between passes of the same code (the SM clock under the
700 W cap: docs/kernel-design.md, "What bounds it"). One pass therefore decides a config by where it fell in that
spread. `--rounds N` walks the whole config list N
times (so every config meets the GPU in more than one state) and reports, per config and
implementation variant, the median of its N pass times; each pass's time is kept in `ms_rounds`. It removes a
single pass's outliers, not the power cap: N passes back to back heat the GPU more than one.
With several implementations the order they run in within a config turns by one each pass (pass_order): the
compute-bound configs reach the cap inside their timing, so an implementation that always ran right after the
same other one's load would carry that load's heat in every pass.
"""
from __future__ import annotations

import copy
import statistics

# Readings that describe one timing; the merged row takes them from the pass whose time is the median.
TIMING_FIELDS = ("sm_mhz", "min_sm_mhz", "power_w", "limits", "max_temp_c")


def pass_order(impls, round_index):
    """The implementations in the order pass `round_index` runs them: the list turned left by one per pass."""
    if not impls:
        return list(impls)
    shift = round_index % len(impls)
    return list(impls[shift:]) + list(impls[:shift])


def _row_key(row):
    return row["impl"], row["variant"]


def _merge_row(rows, flops, bytes_moved):
    """rows: the same (impl, variant) from each pass, in pass order."""
    merged = copy.deepcopy(rows[0])
    timed = [r for r in rows if r.get("ms")]
    merged["ms_rounds"] = [r.get("ms") for r in rows]
    if not timed:
        return merged
    ms = statistics.median(r["ms"] for r in timed)
    nearest = min(timed, key=lambda r: abs(r["ms"] - ms))
    for field in TIMING_FIELDS:
        if field in nearest:
            merged[field] = nearest[field]
    merged["ms"] = ms
    merged["tflops"] = flops / (ms * 1e-3) / 1e12
    merged["gbps"] = bytes_moved / (ms * 1e-3) / 1e9
    # Correct only if every pass was: one wrong answer marks the merged row wrong.
    oks = [r.get("ok") for r in rows]
    merged["ok"] = False if False in oks else (None if None in oks else True)
    for field in ("err_out", "err_max_rel"):
        errors = [r[field] for r in rows if r.get(field) is not None]
        merged[field] = max(errors) if errors else None
    lse_errors = [r["err_lse"] for r in rows if r.get("err_lse") is not None]
    merged["err_lse"] = max(lse_errors) if lse_errors else None
    failures = [r["error"] for r in rows if r.get("error")]
    merged["error"] = failures[0] if failures else None
    return merged


def merge_rounds(passes):
    """passes: one list of bench_kernel result dicts per pass, configs in the same order. Returns one list."""
    if len(passes) == 1:
        return passes[0]
    merged_results = []
    for per_pass in zip(*passes):
        names = {r["name"] for r in per_pass}
        if len(names) != 1:
            raise ValueError(f"passes disagree on the config order: {sorted(names)}")
        merged = copy.deepcopy(per_pass[0])
        merged["rounds"] = len(per_pass)
        rows_by_key = {}
        for result in per_pass:
            for row in result.get("rows", []):
                rows_by_key.setdefault(_row_key(row), []).append(row)
        merged["rows"] = [_merge_row(rows, merged["flops"], merged["bytes"]) for rows in rows_by_key.values()]
        for field in ("schedule_ms", "flashmla_schedule_ms"):
            schedule = [r[field] for r in per_pass if r.get(field)]
            merged[field] = statistics.median(schedule) if schedule else None
        errors = [r["error"] for r in per_pass if r.get("error")]
        if errors:
            merged["error"] = errors[0]
        merged_results.append(merged)
    return merged_results


def round_line(result, round_index, rounds):
    """One line per config and pass while the passes run (the full table is printed once, for the medians)."""
    timed = [f"{row['variant']} {row['ms'] * 1e3:.1f} us" for row in result.get("rows", []) if row.get("ms")]
    wrong = [row["variant"] for row in result.get("rows", []) if row.get("ok") is False]
    return (f"   pass {round_index + 1}/{rounds} {result['name']}: " + (", ".join(timed) or "-")
            + (f"  WRONG: {wrong}" if wrong else "") + (f"  ERROR {result['error']}" if result.get("error") else ""))
