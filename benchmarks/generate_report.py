"""bench_generate's rows as text and files: one line per finished run, the final Markdown table, the comparison of
flash_mla with the best stock path per case, the JSON file (rewritten after every row, so a run cut short keeps
what it measured) and an optional plot (matplotlib is imported only when one is asked for)."""
from __future__ import annotations

import json
import os

STOCK = ("sdpa", "sdpa_static", "eager", "eager_static")


def fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def case_label(context: int, batch: int) -> str:
    size = f"{context // 1024}K" if context >= 1024 and context % 1024 == 0 else str(context)
    return f"{size}x{batch}"


def status_text(row) -> str:
    if row["status"] in ("ok", "OOM"):
        return row["status"]
    return f"{row['status']}: {row.get('note', '')}".strip()


def row_line(row) -> str:
    head = f"{row['case']:>8} {row['impl']:<12}"
    if row["status"] != "ok":
        return f"{head} {status_text(row)}"
    busy = (f"GPU busy {fmt(row.get('gpu_busy_ms_per_step'), '.2f')} ms/step (span "
            f"{fmt(row.get('gpu_span_ms_per_step'), '.2f')} ms, {fmt(row.get('gpu_events_per_step'), '.0f')} events)")
    return (f"{head} decode {fmt(row.get('decode_ms_per_step'), '.2f')} ms/step, {busy}, "
            f"TTFT {fmt(row.get('ttft_s'), '.3f')} s, peak "
            f"{fmt(row.get('peak_gb'), '.2f')} GB, first call +{fmt(row.get('first_call_extra_s'), '.2f')} s "
            f"({row.get('cache_class')})")


def add_comparisons(rows):
    """Per case: each non-stock row's decode speed over the best stock row's (best stock ms/step / its ms/step), and
    each row's decode step over its own GPU busy time."""
    for row in rows:
        if row.get("decode_ms_per_step") and row.get("gpu_busy_ms_per_step"):
            row["step_over_busy"] = row["decode_ms_per_step"] / row["gpu_busy_ms_per_step"]
    for row in rows:
        if row["impl"] in STOCK or row["status"] != "ok":
            continue
        stock = [r for r in rows if r["case"] == row["case"] and r["impl"] in STOCK]
        timed = [r for r in stock if r["status"] == "ok" and r.get("decode_ms_per_step")]
        if timed:
            best = min(timed, key=lambda r: r["decode_ms_per_step"])
            row["speedup_vs_best_stock"] = best["decode_ms_per_step"] / row["decode_ms_per_step"]
            row["best_stock"] = best["impl"]
        elif stock:
            row["best_stock"] = "none ran (" + ", ".join(f"{r['impl']} {r['status']}" for r in stock) + ")"
    return rows


COLUMNS = [
    ("case", lambda r: r["case"]),
    ("impl", lambda r: r["impl"]),
    ("status", status_text),
    ("decode ms/step", lambda r: fmt(r.get("decode_ms_per_step"), ".2f")),
    ("GPU busy ms/step", lambda r: fmt(r.get("gpu_busy_ms_per_step"), ".2f")),
    ("step / busy", lambda r: fmt(r.get("step_over_busy"), ".2f")),
    ("TTFT s", lambda r: fmt(r.get("ttft_s"), ".3f")),
    ("peak GB", lambda r: fmt(r.get("peak_gb"), ".2f")),
    ("first call +s", lambda r: fmt(r.get("first_call_extra_s"), ".2f")),
    ("x best stock", lambda r: fmt(r.get("speedup_vs_best_stock"), ".2f")),
]


def markdown_table(rows) -> str:
    headers = [name for name, _ in COLUMNS]
    cells = [[cell(r) for _, cell in COLUMNS] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(cell, widths)) + " |" for cell in cells]
    return "\n".join(lines)


def write_json(path, report):
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, default=str)
    os.replace(tmp, path)


def write_plot(rows, path: str, title: str) -> str:
    """Decode ms/step per case, one bar per implementation; OOM and failed runs marked at the bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    width = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cases)), 4.5))
    for k, impl in enumerate(impls):
        for i, case in enumerate(cases):
            row = next((r for r in rows if r["case"] == case and r["impl"] == impl), None)
            x = i + (k - (len(impls) - 1) / 2) * width
            if row is None:
                continue
            if row["status"] == "ok" and row.get("decode_ms_per_step"):
                ax.bar(x, row["decode_ms_per_step"], width, color=f"C{k}", label=impl if i == 0 else None)
            else:
                ax.text(x, 0, row["status"], rotation=90, ha="center", va="bottom", fontsize=7, color=f"C{k}")
    ax.set_xticks(range(len(cases)), cases)
    ax.set_xlabel("context x batch")
    ax.set_ylabel("decode ms/step (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    for k, impl in enumerate(impls):  # an implementation that never ran still gets its legend entry
        if impl not in labels:
            ax.bar(0, 0, width, color=f"C{k}", label=impl)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
