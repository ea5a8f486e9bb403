"""Several bench_kernel runs side by side: one build against another (an A/B of a kernel change).

    python -m benchmarks.compare_runs base=base_1.json,base_2.json new=new_1.json,new_2.json [--json ab.json]

Two builds of the extension cannot be loaded in one process (both register the same torch.library ops), so an A/B
times each build in its own bench_kernel processes, alternating (base, new, base, new: the GPU's clock drifts with
its heat under the power cap, docs/kernel-design.md "What bounds it"), with FlashMLA timed in every process beside
it. `tools/device_check.sh`'s `ab` stage runs them. This prints, per config, each label's time of `ours` (the
median over that label's runs; a run's own time is already its passes' median), each label against the first one
(first / label: above 1 is faster), and FlashMLA's times over all the runs: how far they spread is how far the GPU
moved between processes, the noise that a difference has to exceed. Then the geometric mean per label over the
configs that every label timed, and wrong results, which no speed-up excuses. Runs made with `--kernel-times` also
give, per config, how long each label's call runs after its decode kernel ends, and the peer's.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

from benchmarks.kernel_report import geomean


def parse_label(spec: str) -> tuple[str, list[str]]:
    """'label=a.json,b.json' -> ('label', ['a.json', 'b.json'])."""
    label, sep, paths = spec.partition("=")
    files = [path for path in paths.split(",") if path]
    if not sep or not label or not files:
        raise ValueError(f"runs: expected LABEL=run.json[,run.json...], got {spec!r}")
    return label, files


def times_by_config(runs: list[dict], impl: str, field: str = "ms") -> tuple[dict[str, list[float]], set[str]]:
    """Per config name: impl's time in us in each run that timed it (`field`: "ms", the call's time, or "tail_us",
    its time after the decode kernel); and the configs where a run got a wrong result. The row compared is the
    impl's variant of its own name (ours: not its other call forms), or its only variant (ours_fp8's is
    "ours-fp8")."""
    scale = 1e3 if field == "ms" else 1.0
    times: dict[str, list[float]] = {}
    wrong: set[str] = set()
    for run in runs:
        for config in run["configs"]:
            rows = [row for row in config.get("rows", []) if row.get("impl") == impl]
            named = [row for row in rows if row.get("variant", impl) == impl]
            for row in named or (rows if len({row.get("variant") for row in rows}) == 1 else []):
                value = row.get(field)
                # A time of 0 is a row that did not run; a tail of 0 is a call that ends with its decode kernel.
                if value is not None and (value > 0 or field == "tail_us"):
                    times.setdefault(config["name"], []).append(value * scale)
                if row.get("ok") is False:
                    wrong.add(config["name"])
    return times, wrong


def _median_or_none(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def compare(labelled_runs: list[tuple[str, list[dict]]], impl: str = "ours", peer: str = "flashmla") -> dict:
    """labelled_runs: (label, bench_kernel JSON results) in order, the first label the reference."""
    if len(labelled_runs) < 2:
        raise ValueError(f"runs: expected at least two labels to compare, got {len(labelled_runs)}")
    per_label = {label: times_by_config(runs, impl) for label, runs in labelled_runs}
    tails = {label: times_by_config(runs, impl, "tail_us")[0] for label, runs in labelled_runs}
    all_runs = [run for _, runs in labelled_runs for run in runs]
    peer_times, _ = times_by_config(all_runs, peer)
    peer_tails, _ = times_by_config(all_runs, peer, "tail_us")
    labels = [label for label, _ in labelled_runs]
    first = labels[0]
    names: list[str] = []
    for label in labels:
        names += [name for name in per_label[label][0] if name not in names]
    rows = []
    for name in names:
        us = {label: statistics.median(per_label[label][0][name]) if name in per_label[label][0] else None
              for label in labels}
        ratio = {label: us[first] / us[label] if us[first] and us[label] else None for label in labels[1:]}
        rows.append(dict(config=name, us=us, runs_us={label: per_label[label][0].get(name, []) for label in labels},
                         ratio_to_first=ratio, peer_us=peer_times.get(name, []),
                         tail_us={label: _median_or_none(tails[label].get(name)) for label in labels},
                         peer_tail_us=_median_or_none(peer_tails.get(name)),
                         wrong=[label for label in labels if name in per_label[label][1]]))
    every_label = [row for row in rows if all(row["us"][label] for label in labels)]
    geomean_to_first = {label: geomean([row["ratio_to_first"][label] for row in every_label]) for label in labels[1:]}
    return dict(labels=labels, impl=impl, peer=peer, rows=rows, geomean_to_first=geomean_to_first)


def table_lines(result: dict) -> list[str]:
    labels, first = result["labels"], result["labels"][0]
    header = (["config"] + [f"{label} us" for label in labels] + [f"{first} / {label}" for label in labels[1:]]
              + [f"{result['peer']} us (every run)"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in result["rows"]:
        cells = [row["config"]]
        cells += [f"{row['us'][label]:.1f}" if row["us"][label] else "-" for label in labels]
        cells += [f"{row['ratio_to_first'][label]:.3f}" if row["ratio_to_first"][label] else "-"
                  for label in labels[1:]]
        cells.append(" / ".join(f"{us:.1f}" for us in row["peer_us"]) or "-")
        if row["wrong"]:
            cells[0] += f" (WRONG: {', '.join(row['wrong'])})"
        lines.append("| " + " | ".join(cells) + " |")
    if any(us is not None for row in result["rows"] for us in row["tail_us"].values()):
        lines += ["", f"time after the decode kernel, us (median of runs; {result['peer']}: of every run)",
                  "| config | " + " | ".join(labels) + f" | {result['peer']} |", "|" + "---|" * (len(labels) + 2)]
        for row in result["rows"]:
            cells = [row["config"]] + [f"{row['tail_us'][label]:.1f}" if row["tail_us"][label] is not None else "-"
                                       for label in labels]
            cells.append(f"{row['peer_tail_us']:.1f}" if row["peer_tail_us"] is not None else "-")
            lines.append("| " + " | ".join(cells) + " |")
    for label, value in result["geomean_to_first"].items():
        lines.append(f"geomean {first} / {label}: " + (f"{value:.4f}" if value else "-")
                     + " over the configs every label timed")
    wrong = sorted({label for row in result["rows"] for label in row["wrong"]})
    lines.append(f"wrong results: {', '.join(wrong) if wrong else 'none'}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_runs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="LABEL=run.json[,run.json...], the first label the reference")
    parser.add_argument("--impl", default="ours", help="the implementation compared between the labels")
    parser.add_argument("--peer", default="flashmla", help="the implementation shown as the drift between runs")
    parser.add_argument("--json", help="write the comparison to this path")
    args = parser.parse_args(argv)
    labelled = []
    for spec in args.runs:
        try:
            label, files = parse_label(spec)
        except ValueError as error:
            parser.error(str(error))
        if label in [existing for existing, _ in labelled]:
            parser.error(f"runs: label {label!r} given twice")
        loaded = []
        for path in files:
            try:
                with open(path) as handle:
                    run = json.load(handle)
            except (OSError, ValueError) as error:
                parser.error(f"runs: cannot read {path}: {error}")
            if not isinstance(run, dict) or not isinstance(run.get("configs"), list):
                parser.error(f"runs: {path} is not a bench_kernel --json result (no 'configs' list)")
            loaded.append(run)
        labelled.append((label, loaded))
    try:
        result = compare(labelled, impl=args.impl, peer=args.peer)
    except ValueError as error:
        parser.error(str(error))
    print("\n".join(table_lines(result)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return 1 if any(row["wrong"] for row in result["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
