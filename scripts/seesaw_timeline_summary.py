"""Summarises the debug timeline printed by the seesaw kernel (-DHF_FLASHMLA_TIMELINE, scripts/seesaw_timeline.sh):
per launch, when the CTAs start and end (global ns) and how their durations relate to their items and pages;
per item of CTA (0, 0), the SM clocks between item start, Q landed, last pair done, row sums exchanged, tile stored;
and the start-to-start interval of the traced pairs (TRACE_FROM in scripts/seesaw_timeline.sh), so that a window
across an item boundary shows what the boundary costs (run 75: ~14 K clk there against ~7.8 K between pairs).

    python3 scripts/seesaw_timeline_summary.py run.log
"""
import re
import statistics
import sys

CTA = re.compile(r"cta (\d+) (\d+): (\d+) (\d+) items (\d+) pages (\d+)")
ITEM = re.compile(r"items wg(\d) item (\d+): (-?\d+) (-?\d+) (-?\d+) (-?\d+) (-?\d+)")
PAIR = re.compile(r"timeline wg(\d) pair (\d+): (-?\d+)")


def launches(ctas, gap_ns=20_000):
    """Groups CTA records into launches: a launch's CTAs all start within gap_ns of each other."""
    ctas = sorted(ctas, key=lambda c: c["start"])
    groups, current = [], []
    for c in ctas:
        if current and c["start"] - current[0]["start"] > gap_ns:
            groups.append(current)
            current = []
        current.append(c)
    if current:
        groups.append(current)
    return groups


def summarise_launch(group):
    t0 = min(c["start"] for c in group)
    span = max(c["end"] for c in group) - t0
    starts = [(c["start"] - t0) / 1e3 for c in group]
    ends = [(c["end"] - t0) / 1e3 for c in group]
    # CTA (0, 0) prints the pair and item timelines too, which delays its end: left out of the statistics.
    group = [c for c in group if (c["mb"], c["part"]) != (0, 0)]
    busy = [c for c in group if c["pages"] > 0]
    durs = [(c["end"] - c["start"]) / 1e3 for c in busy]
    print(f"  launch: {len(group)} CTAs, span {span / 1e3:.1f} us; start spread {max(starts):.1f} us; "
          f"end min/median/max {min(ends):.1f}/{statistics.median(ends):.1f}/{max(ends):.1f} us")
    if not busy:
        return
    print(f"  per CTA: duration min/median/max {min(durs):.1f}/{statistics.median(durs):.1f}/{max(durs):.1f} us; "
          f"pages {min(c['pages'] for c in busy)}-{max(c['pages'] for c in busy)}, "
          f"items {min(c['items'] for c in busy)}-{max(c['items'] for c in busy)}")
    # Least squares duration = a * pages + b * items + c over the CTAs: what a page and an item cost.
    try:
        import numpy as np
        A = np.array([[c["pages"], c["items"], 1.0] for c in busy])
        y = np.array(durs)
        if np.linalg.matrix_rank(A) == 3:
            (a, b, c0), *_ = np.linalg.lstsq(A, y, rcond=None)
            print(f"  fit: duration ~ {a:.3f} us/page + {b:.2f} us/item + {c0:.2f} us")
    except ImportError:
        pass
    by_shape = {}
    for c, d in zip(busy, durs):
        by_shape.setdefault((c["items"], c["pages"]), []).append(d)
    print("  mean duration by (items, pages): " +
          " ".join(f"{k[0]},{k[1]}:{statistics.mean(v):.1f}" for k, v in sorted(by_shape.items())))


def main(path):
    ctas, items, pair_starts = [], {}, {}
    for line in open(path):
        m = CTA.search(line)
        if m:
            mb, part, start, end, n_items, pages = (int(v) for v in m.groups())
            ctas.append(dict(mb=mb, part=part, start=start, end=end, items=n_items, pages=pages))
        m = PAIR.search(line)
        if m:
            wg, k, start = (int(v) for v in m.groups())
            pair_starts.setdefault((wg, k), []).append(start)
        m = ITEM.search(line)
        if m:
            wg, k, *marks = (int(v) for v in m.groups())
            items.setdefault((wg, k), []).append(marks)
    groups = launches(ctas)
    for g in groups[-2:]:  # the last launches: warm
        summarise_launch(g)
    for (wg, k), runs in sorted(items.items()):
        marks = runs[-1]
        d = [marks[i + 1] - marks[i] for i in range(4)]
        # From the previous item's stored tile to this item's start: reading what the item needs (run 75: ~1800).
        previous = items.get((wg, k - 1))
        gap = f", gap before {marks[0] - previous[-1][4]:5d}" if previous and len(previous) == len(runs) else ""
        print(f"  wg{wg} item {k}: q wait {d[0]:6d} clk, pairs {d[1]:7d}, sum exchange {d[2]:5d}, store {d[3]:5d}{gap}")
    for wg in sorted({wg for wg, _ in pair_starts}):
        # The last launch's start of each traced pair (a log holds one record per launch, in launch order).
        starts = sorted((k, runs[-1]) for (w, k), runs in pair_starts.items() if w == wg)
        steps = [f"{k1}:{t1 - t0}" for (k0, t0), (k1, t1) in zip(starts, starts[1:]) if k1 == k0 + 1]
        if steps:
            print(f"  wg{wg} pair start-to-start clk (pair:interval): " + " ".join(steps))


if __name__ == "__main__":
    main(sys.argv[1])
