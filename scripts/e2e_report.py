"""Result rows of bench_generate.py as text: the final table (Markdown), the overhead table, one-line
progress records, and the JSON file (rewritten after every row, so a run cut short keeps what it measured)."""
from __future__ import annotations

import json
import os


def fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def status_text(row) -> str:
    if row["status"] == "ok":
        return "ok"
    if row["status"] == "OOM":
        return "OOM"
    return f"{row['status']}: {row.get('note', '')}".strip()


def row_line(row) -> str:
    """One line per finished run, printed as it completes."""
    head = f"{row['attn']:>9} ctx {row['context']:>6} x b {row['batch']:>2}"
    if row["status"] != "ok":
        return f"{head}: {status_text(row)}"
    calls = row.get("flash_mla_calls")
    paths = "" if not calls else ", paths " + " ".join(f"{k}={v}" for k, v in sorted(calls.items()))
    return (f"{head}: ttft {fmt(row['ttft_s'], '.3f')} s, decode {fmt(row.get('decode_ms_per_step'), '.2f')} ms/step "
            f"= {fmt(row.get('decode_tok_s'), '.1f')} tok/s, peak {fmt(row['peak_gb'], '.2f')} GB, "
            f"kv {fmt(row['kv_mb'], '.1f')} MB ({row.get('cache_class')}){paths}")


MAIN_COLUMNS = [
    ("attn", "attn", lambda r: r["attn"]),
    ("context", "context", lambda r: str(r["context"])),
    ("batch", "batch", lambda r: str(r["batch"])),
    ("status", "status", status_text),
    ("TTFT s", "ttft_s", lambda r: fmt(r.get("ttft_s"), ".3f")),
    ("decode ms/step", "decode_ms_per_step", lambda r: fmt(r.get("decode_ms_per_step"), ".2f")),
    ("decode tok/s", "decode_tok_s", lambda r: fmt(r.get("decode_tok_s"), ".1f")),
    ("x best stock", "ratio_vs_best_stock", lambda r: _ratio_text(r)),
    ("peak GB", "peak_gb", lambda r: fmt(r.get("peak_gb"), ".2f")),
    ("KV-cache MB alloc", "kv_mb", lambda r: fmt(r.get("kv_mb"), ".1f")),
    ("KV B/token/layer", "kv_bytes_per_token_layer", lambda r: fmt(r.get("kv_bytes_per_token_layer"), ".0f")),
]

OVERHEAD_COLUMNS = [
    ("attn", lambda r: r["attn"]),
    ("context", lambda r: str(r["context"])),
    ("batch", lambda r: str(r["batch"])),
    ("generate ms/step", lambda r: fmt(r.get("decode_ms_per_step"), ".2f")),
    ("bare forward ms/step", lambda r: fmt(r.get("fwd_ms_per_step"), ".2f")),
    ("host ms/step", lambda r: fmt(r.get("host_ms_per_step"), ".2f")),
    ("loop overhead ms", lambda r: fmt(r.get("loop_overhead_ms"), ".2f")),
    ("loop share", lambda r: fmt(r.get("loop_share"), ".0%")),
    ("x best stock (bare)", lambda r: fmt(r.get("ratio_bare_vs_best_stock_bare"), ".1f")),
]


def _ratio_text(row):
    if row.get("ratio_vs_best_stock") is not None:
        return f"{row['ratio_vs_best_stock']:.1f}"
    return row.get("ratio_note") or "-"


def markdown_table(headers, cells) -> str:
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(cell, widths)) + " |" for cell in cells]
    return "\n".join(lines)


def main_table(rows) -> str:
    return markdown_table([c[0] for c in MAIN_COLUMNS], [[c[2](r) for c in MAIN_COLUMNS] for r in rows])


def overhead_table(rows) -> str:
    measured = [r for r in rows if r.get("fwd_ms_per_step") is not None]
    return markdown_table([c[0] for c in OVERHEAD_COLUMNS], [[c[1](r) for c in OVERHEAD_COLUMNS] for r in measured])


def add_comparisons(rows, stock=("sdpa", "eager")):
    """Per (context, batch): flash_mla's decode tok/s over the best stock implementation's, and the same
    for bare forwards; and how much of each generate() step is the loop's own overhead."""
    for row in rows:
        gen, fwd = row.get("decode_ms_per_step"), row.get("fwd_ms_per_step")
        if gen is not None and fwd is not None:
            row["loop_overhead_ms"] = gen - fwd
            row["loop_share"] = (gen - fwd) / gen if gen > 0 else None
    for row in rows:
        if row["attn"] in stock or row["status"] != "ok":
            continue
        peers = [r for r in rows if r["attn"] in stock and r["context"] == row["context"] and r["batch"] == row["batch"]]
        done = [r for r in peers if r["status"] == "ok" and r.get("decode_tok_s")]
        if done:
            best = max(done, key=lambda r: r["decode_tok_s"])
            row["ratio_vs_best_stock"] = row["decode_tok_s"] / best["decode_tok_s"]
            row["best_stock"] = best["attn"]
            bare = [r for r in done if r.get("fwd_ms_per_step")]
            if row.get("fwd_ms_per_step") and bare:
                best_bare = min(r["fwd_ms_per_step"] for r in bare)
                row["ratio_bare_vs_best_stock_bare"] = best_bare / row["fwd_ms_per_step"]
        elif peers and all(r["status"] == "OOM" or "OOM" in r.get("note", "") for r in peers):
            row["ratio_note"] = "stock OOM"
        elif peers:
            row["ratio_note"] = "stock " + "/".join(sorted({r["status"] for r in peers}))
    return rows


def targets_summary(rows, ratio_targets, capability_targets, stock=("sdpa", "eager"), goal=10.0) -> list[str]:
    """Issue 5's targets, one line each: the decode speed-up at ratio_targets, and whether flash_mla runs
    (and stock does not) at capability_targets."""
    lines = []

    def find(attn, context, batch):
        return next((r for r in rows if (r["attn"], r["context"], r["batch"]) == (attn, context, batch)), None)

    def stock_text(context, batch):
        parts = []
        for attn in stock:
            r = find(attn, context, batch)
            if r is not None:
                parts.append(f"{attn} {fmt(r.get('decode_tok_s'), '.1f')} tok/s" if r["status"] == "ok"
                             else f"{attn} {status_text(r)}")
        return "; ".join(parts) or "stock not run"

    for context, batch in ratio_targets:
        row = find("flash_mla", context, batch)
        if row is None:
            continue
        head = f"{context // 1024}K x {batch}: "
        if row["status"] != "ok":
            lines.append(head + f"flash_mla {status_text(row)} ({stock_text(context, batch)}): target NOT MET")
            continue
        ratio = row.get("ratio_vs_best_stock")
        verdict = ("met" if ratio >= goal else "NOT MET") if ratio is not None else "no stock figure"
        lines.append(head + f"flash_mla {row['decode_tok_s']:.1f} tok/s, {fmt(ratio, '.1f')}x best stock "
                     f"({stock_text(context, batch)}); target >= {goal:g}x: {verdict}")
    for context, batch in capability_targets:
        row = find("flash_mla", context, batch)
        if row is None:
            continue
        head = f"{context // 1024}K x {batch}: "
        if row["status"] == "ok":
            lines.append(head + f"flash_mla runs: {row['decode_tok_s']:.1f} tok/s, peak {fmt(row.get('peak_gb'), '.1f')} "
                         f"GB ({stock_text(context, batch)})")
        else:
            lines.append(head + f"flash_mla {status_text(row)}: target NOT MET ({stock_text(context, batch)})")
    return lines


def write_json(path, meta, rows):
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    os.replace(tmp, path)
