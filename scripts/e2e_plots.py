"""PNG plots of bench_generate.py rows: decode tokens/s vs context and peak memory vs context, one line per
(attention, batch). matplotlib is imported only here, only when a plot is asked for."""
from __future__ import annotations

STYLE = {"flash_mla": "-", "sdpa": "--", "eager": ":"}
COLOR = {"flash_mla": "tab:red", "sdpa": "tab:blue", "eager": "tab:gray"}
MARKERS = {1: "o", 8: "s", 32: "^"}


def write_plots(rows, prefix: str, title: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, ylabel, suffix in (("decode_tok_s", "decode tokens/s (whole batch)", "tokens_per_s"),
                                ("peak_gb", "peak GPU memory (GB)", "memory")):
        fig, ax = plt.subplots(figsize=(10, 5))
        series = sorted({(r["attn"], r["batch"]) for r in rows})
        for attn, batch in series:
            points = sorted((r["context"], r[key]) for r in rows
                            if r["attn"] == attn and r["batch"] == batch and r["status"] == "ok" and r.get(key))
            failed = sorted(r["context"] for r in rows if r["attn"] == attn and r["batch"] == batch
                            and (r["status"] == "OOM" or "OOM" in r.get("note", "")))
            if not points and not failed:
                continue
            label = f"{attn} b={batch}" + (f" (OOM at {', '.join(_k(c) for c in failed)})" if failed else "")
            xs, ys = zip(*points) if points else ((), ())
            ax.plot(xs, ys, STYLE.get(attn, "-."), marker=MARKERS.get(batch, "x"), color=COLOR.get(attn),
                    alpha=1.0 if batch == 1 else 0.85 if batch == 8 else 0.7, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        contexts = sorted({r["context"] for r in rows})
        ax.set_xticks(contexts, [_k(c) for c in contexts])
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        path = f"{prefix}_{suffix}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def _k(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens >= 1024 and tokens % 1024 == 0 else str(tokens)
