"""bench_kernel's report: from its per-config results to the summary (ours vs FlashMLA as the headline, errors,
host time, best figures, each peer, the FP8 cache against bf16), the per-config blocks, the compact table and the
plot. Also read by compare_runs (geomean) and on its own through `bench_kernel --from-json`.
"""
from __future__ import annotations

import json
import math
import os
import statistics

from benchmarks import kernel_configs as kc
from benchmarks import kernel_profile

FIGURES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flashmla_reference_figures.json")
LABELS = {"ours": "ours", "flashmla": "FlashMLA", "flashinfer": "FlashInfer", "triton": "our Triton",
          "sglang": "SGLang", "torch": "torch", "ours_step": "ours step", "flashmla_step": "FlashMLA step",
          "triton_fp8": "our Triton FP8", "ours_fp8": "ours FP8"}


def best_rows(result):
    """One row per impl: the fastest correct variant (else the fastest, else the error/note row)."""
    by_impl = {}
    for row in result["rows"]:
        by_impl.setdefault(row["impl"], []).append(row)
    best = {}
    for impl, rows in by_impl.items():
        timed = [r for r in rows if r["ms"]]
        good = [r for r in timed if r["ok"] is not False]
        pool = good or timed
        best[impl] = min(pool, key=lambda r: r["ms"]) if pool else rows[0]
    return best


def timed_ok(row):
    return bool(row and row.get("ms") and row.get("ok") is not False)


def load_figures():
    """FlashMLA's recorded figures by (b, L, s_q, h_q), and the published figures of other kernels."""
    with open(FIGURES_PATH) as handle:
        figure_data = json.load(handle)
    return {(f["b"], f["L"], f["s_q"], f["h_q"]): f for f in figure_data["flashmla"]}, figure_data.get("published", {})


def figure_for(result, figures):
    if result["group"] != "main" or result.get("spread", "varlen" if result.get("varlen") else "equal") != "equal":
        return None
    return figures.get((result["b"], result["mean_len"], result["s_q"], result["h_q"]))


def fmt(value, spec, empty="-"):
    return empty if value is None else format(value, spec)


def geomean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def ratio_stats(pairs):
    """pairs: [(ratio, config name)] -> geomean, count, min, configs below 1.0."""
    ratios = [r for r, _ in pairs]
    return dict(configs=len(pairs), geomean=geomean(ratios), min=min(pairs) if pairs else None,
                below_1=sorted(name for r, name in pairs if r < 1.0))


def summarize(results, figures, impls, host):
    best = {r["name"]: best_rows(r) for r in results}
    by_name = {r["name"]: r for r in results}
    summary = {}
    pairs = []  # (ours vs FlashMLA speed ratio, config name)
    for r in results:
        mine, theirs = best[r["name"]].get("ours"), best[r["name"]].get("flashmla")
        if timed_ok(mine) and timed_ok(theirs):
            pairs.append((theirs["ms"] / mine["ms"], r["name"]))
    vs = {"all": ratio_stats(pairs)}
    for group in kc.GROUPS:
        chosen = [p for p in pairs if by_name[p[1]]["group"] == group]
        if chosen:
            vs[group] = ratio_stats(chosen)
    main = [p for p in pairs if by_name[p[1]]["group"] == "main"]
    vs["main_by_bound"] = {bound: geomean([x for x, n in main if kc.bound_of(by_name[n]["s_q"] * by_name[n]["h_q"])
                                           == bound]) for bound in ("memory", "middle", "compute")}
    vs["main_by_spread"] = {spread: geomean([x for x, n in main if by_name[n]["spread"] == spread])
                            for spread in kc.SPREADS}
    summary["ours_vs_flashmla"] = vs

    errors = {}
    for impl in ("ours", "flashmla"):
        worst = [(best[r["name"]][impl]["err_max_rel"], r["name"]) for r in results
                 if impl in best[r["name"]] and best[r["name"]][impl].get("err_max_rel") is not None]
        errors[impl] = max(worst) if worst else None
    summary["max_rel_error_vs_float32"] = errors
    summary["host_us_per_call"] = host
    for key, field in (("ours", "schedule_ms"), ("flashmla", "flashmla_schedule_ms")):
        values = [r[field] for r in results if r.get(field)]
        summary.setdefault("schedule_us_median", {})[key] = statistics.median(values) * 1e3 if values else None
    tops = {}
    for impl in ("ours", "flashmla"):
        rows = [(best[r["name"]].get(impl), r) for r in results]
        rows = [(row, r) for row, r in rows if timed_ok(row)]
        mem = [(row["gbps"], r["name"]) for row, r in rows if kc.bound_of(r["s_q"] * r["h_q"]) == "memory"]
        comp = [(row["tflops"], r["name"]) for row, r in rows if kc.bound_of(r["s_q"] * r["h_q"]) == "compute"]
        tops[impl] = {"max_gbps_memory_bound": max(mem) if mem else None,
                      "max_tflops_compute_bound": max(comp) if comp else None}
    summary["best"] = tops

    recorded = []
    for r in results:
        fig, row = figure_for(r, figures), best[r["name"]].get("ours")
        if fig and timed_ok(row):
            recorded.append((fig["flashmla_ms"] / row["ms"], r["name"]))
    summary["ours_vs_flashmla_recorded_figures"] = ratio_stats(recorded)

    peers = {}
    for impl in impls:
        if impl in ("ours", "flashmla"):
            continue
        speedups = []
        for r in results:
            mine, theirs = best[r["name"]].get("ours"), best[r["name"]].get(impl)
            if timed_ok(mine) and timed_ok(theirs):
                speedups.append((theirs["ms"] / mine["ms"], r["name"]))
        peers[impl] = ratio_stats(speedups)
    summary["ours_speedup_over_peers"] = peers
    for exact_impl, lossy_impl in (("ours", "ours_fp8"), ("triton", "triton_fp8")):
        fp8 = []  # (bf16-cache time / FP8-cache time, config name)
        for r in results:
            exact, lossy = best[r["name"]].get(exact_impl), best[r["name"]].get(lossy_impl)
            if timed_ok(exact) and timed_ok(lossy):
                fp8.append((exact["ms"] / lossy["ms"], r["name"]))
        if fp8:
            summary[f"{lossy_impl}_vs_{exact_impl}"] = {
                "all": ratio_stats(fp8),
                "by_bound": {bound: geomean([x for x, n in fp8 if kc.bound_of(by_name[n]["s_q"] * by_name[n]["h_q"])
                                             == bound]) for bound in ("memory", "middle", "compute")},
                # Query rows per call pick the FP8 kernel's form (narrow up to 32, the seesaw feed above; 64, 128,
                # 256 rows are one, two, four m-block CTAs per page), so its targets are read per row count.
                "by_rows": {rows: geomean([x for x, n in fp8 if by_name[n]["s_q"] * by_name[n]["h_q"] == rows])
                            for rows in sorted({by_name[n]["s_q"] * by_name[n]["h_q"] for _, n in fp8})}}
    summary["wrong"] = [(r["name"], row["variant"]) for r in results for row in r["rows"] if row["ok"] is False]
    summary["errors"] = [(r["name"], row["variant"], row["error"]) for r in results for row in r["rows"]
                         if row["error"] and not row["error"].startswith("not run")][:50]
    return summary


def summary_lines(summary, meta):
    lines = ["== summary"]
    vs = summary["ours_vs_flashmla"]
    passes = f"median of {meta.get('repeats', 1)} alternating repeats" + (
        f" x {meta['rounds']} passes" if meta.get("rounds", 1) > 1 else "")
    lines.append(f"   ours vs FlashMLA, same run ({passes}); speed ratio = FlashMLA time / ours:")

    def stats_text(s):
        mn = s["min"]
        return (f"geomean {fmt(s['geomean'], '.3f')} over {s['configs']}"
                + (f", min {mn[0]:.3f} at {mn[1]}" if mn else "") + f", below 1.0 on {len(s['below_1'])}")
    for group in ("main",) + tuple(g for g in kc.GROUPS if g != "main") + ("all",):
        if group in vs and vs[group]["configs"]:
            lines.append(f"     {group:<6} {stats_text(vs[group])}")
    bounds, spreads = vs.get("main_by_bound", {}), vs.get("main_by_spread", {})
    if any(bounds.values()):
        lines.append("     main by bound: " + ", ".join(f"{k} {fmt(v, '.3f')}" for k, v in bounds.items())
                     + "; by lengths: " + ", ".join(f"{k} {fmt(v, '.3f')}" for k, v in spreads.items()))
    below = vs["all"]["below_1"]
    if below:
        lines.append(f"     below 1.0: {', '.join(below[:20])}" + (" ..." if len(below) > 20 else ""))
    err = summary["max_rel_error_vs_float32"]
    lines.append("   max relative error vs the float32 reference (max |out - ref| / max |ref|): " + "; ".join(
        f"{LABELS[impl]} {fmt(e and e[0], '.2e')}" + (f" at {e[1]}" if e else "") for impl, e in err.items()))
    host = summary.get("host_us_per_call") or {}
    if host.get("us_per_call"):
        lines.append(f"   host time per call ({host['workload']}, {host['calls']} calls, no sync between them): "
                     + ", ".join(f"{name} {us:.1f} us" for name, us in host["us_per_call"].items()))
    sched = summary["schedule_us_median"]
    lines.append(f"   schedule alone, median over configs: ours get_mla_metadata {fmt(sched.get('ours'), '.1f')} us, "
                 f"FlashMLA get_mla_decoding_metadata {fmt(sched.get('flashmla'), '.1f')} us")
    for impl, top in summary["best"].items():
        m, c = top["max_gbps_memory_bound"], top["max_tflops_compute_bound"]
        if m or c:
            lines.append(f"   best {LABELS[impl]}: {fmt(m and m[0], '.0f')} GB/s" + (f" at {m[1]}" if m else "")
                         + f" (h_q*s_q <= 32), {fmt(c and c[0], '.1f')} TFLOP/s" + (f" at {c[1]}" if c else "")
                         + " (h_q*s_q >= 128)")
    rec = summary["ours_vs_flashmla_recorded_figures"]
    if rec["configs"]:
        lines.append(f"   ours vs FlashMLA's recorded figures (flashmla_reference_figures.json, another day): "
                     f"{stats_text(rec)}")
    for impl, s in summary["ours_speedup_over_peers"].items():
        if s["configs"]:
            lines.append(f"   ours vs {LABELS.get(impl, impl)}: {LABELS.get(impl, impl)} time / ours {stats_text(s)}")
    fp8_lines = (("ours_fp8_vs_ours", "ours FP8 vs ours"), ("triton_fp8_vs_triton", "our Triton FP8 vs our Triton"))
    for key, label in fp8_lines:
        fp8 = summary.get(key)
        if fp8:
            lines.append(f"   {label} (bf16 cache): bf16 time / FP8 time {stats_text(fp8['all'])}; by bound: "
                         + ", ".join(f"{k} {fmt(v, '.3f')}" for k, v in fp8["by_bound"].items())
                         + "; by query rows: " + ", ".join(f"{k} {fmt(v, '.3f')}" for k, v in fp8["by_rows"].items()))
    wrong, errors = summary["wrong"], summary["errors"]
    lines.append(f"   incorrect results: {len(wrong)}" + (f" {wrong[:10]}" if wrong else ""))
    lines.append(f"   errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    return lines


def compact_table(results, impls):
    """Markdown: one row per config, times in us, ours vs FlashMLA first."""
    peers = [i for i in impls if i not in ("ours", "flashmla")]
    headers = (["config", "ours us", "FlashMLA us", "speed vs FlashMLA"] + [f"{LABELS.get(i, i)} us" for i in peers]
               + ["ours TFLOP/s", "ours GB/s", "err ours", "err FlashMLA"])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in results:
        best = best_rows(r)

        def us(impl):
            row = best.get(impl)
            if timed_ok(row):
                return fmt(row["ms"] * 1e3, ".1f")
            return "WRONG" if row and row.get("ok") is False else "-"
        mine, theirs = best.get("ours"), best.get("flashmla")
        ratio = theirs["ms"] / mine["ms"] if timed_ok(mine) and timed_ok(theirs) else None
        cells = [r["name"], us("ours"), us("flashmla"), fmt(ratio, ".3f")] + [us(i) for i in peers]
        cells += [fmt(mine.get("tflops") if timed_ok(mine) else None, ".0f"),
                  fmt(mine.get("gbps") if timed_ok(mine) else None, ".0f"),
                  fmt(mine and mine.get("err_max_rel"), ".1e"), fmt(theirs and theirs.get("err_max_rel"), ".1e")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_config(result, figures, published, log):
    log(f"== {result['name']}: b={result['b']} s_q={result['s_q']} h_q={result['h_q']} {result['spread']} "
        f"mean={result['mean_len']} max={result['max_len']} sum={result['sum_len']}  "
        f"({result['bytes'] / 1e9:.3f} GB, {result['flops'] / 1e12:.3f} TFLOP)")
    if result.get("error"):
        log(f"   ERROR {result['error']}")
        return
    log(f"   schedule: ours {fmt(result.get('schedule_ms') and result['schedule_ms'] * 1e3, '.1f')} us, FlashMLA "
        f"{fmt(result.get('flashmla_schedule_ms') and result['flashmla_schedule_ms'] * 1e3, '.1f')} us"
        f"   checked seqs {result['checked_sequences']}   input copies {result.get('input_copies')}"
        + (f"   REFERENCE ERROR {result['reference_error']}" if result.get("reference_error") else ""))
    flashmla = best_rows(result).get("flashmla")
    base_ms = flashmla["ms"] if timed_ok(flashmla) else None
    log(f"   {'impl':<16}{'us':>10}{'TFLOP/s':>9}{'GB/s':>8}{'vs FlashMLA':>13}{'err(out)':>10}{'max rel':>10}"
        f"{'err(lse)':>10}{'SM MHz':>8}  note")
    fig = figure_for(result, figures)
    if fig:
        log(f"   {'FlashMLA rec.':<16}{fig['flashmla_ms'] * 1e3:>10.1f}{fig['flashmla_tflops']:>9.0f}"
            f"{fig['flashmla_gbps']:>8.0f}{'':>13}  recorded figure, another day")
    pub = published.get(result.get("published_key") or "")
    if pub and (pub.get("flashmla_us") or pub.get("best_us")):
        log(f"   published: FlashMLA {fmt(pub.get('flashmla_us'), '.0f')} us, {pub.get('best_name')} "
            f"{fmt(pub.get('best_us'), '.0f')} us ({pub['note']})")
    for row in result["rows"]:
        if row["ms"] is None:
            text = row["error"] or row["note"] or ""
            flag = "ERROR " if row["error"] and not text.startswith("not run") else ""
            log(f"   {row['variant']:<16}{'-':>10}{'':>30}{fmt(row['err_out'], '.2e'):>10}"
                f"{fmt(row.get('err_max_rel'), '.2e'):>10}{fmt(row['err_lse'], '.2e'):>10}  {flag}{text}")
            continue
        ratio = base_ms / row["ms"] if base_ms else None
        flag = "unchecked" if row["ok"] is None else ("" if row["ok"] else "WRONG")
        log(f"   {row['variant']:<16}{row['ms'] * 1e3:>10.1f}{row['tflops']:>9.1f}{row['gbps']:>8.0f}"
            f"{fmt(ratio, '.3f'):>13}{fmt(row['err_out'], '.2e'):>10}{fmt(row.get('err_max_rel'), '.2e'):>10}"
            f"{fmt(row['err_lse'], '.2e'):>10}{fmt(row.get('sm_mhz'), '.0f'):>8}  {flag}"
            f"{(' ' + row['error']) if row['error'] else ''}")
        if row.get("kernel_us") or row.get("kernel_times_error"):
            log(f"      {kernel_profile.describe(row) if row.get('kernel_us') else row['kernel_times_error']}")


def plot(results, path, log):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as error:
        log(f"plot skipped: matplotlib unavailable ({error!r})")
        return
    shown = [r for r in results if r["rows"]]
    if not shown:
        return
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 0.2 * len(shown)), 9), sharex=True)
    impls = list(dict.fromkeys(row["impl"] for r in shown for row in r["rows"]))
    for ax, key, label in ((axes[0], "gbps", "GB/s"), (axes[1], "tflops", "TFLOP/s")):
        for impl in impls:
            points = [(i, best_rows(r).get(impl)) for i, r in enumerate(shown)]
            points = [(i, row[key]) for i, row in points if timed_ok(row)]
            if points:
                ax.plot(*zip(*points), "o", markersize=3, label=LABELS.get(impl, impl))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_xticks(range(len(shown)))
    axes[1].set_xticklabels([r["name"] for r in shown], rotation=90, fontsize=5)
    fig.suptitle("MLA decode (bf16, h_kv=1, d=576, dv=512, page 64)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"plot written to {path}")


def report(results, summary, meta, log):
    for line in summary_lines(summary, meta):
        log(line)
    log("")
    log(compact_table(results, meta["impls"]))
