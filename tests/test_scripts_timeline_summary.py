"""scripts/seesaw_timeline_summary.py on a small synthetic log: item boundaries and pair intervals (CPU only)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts import seesaw_timeline_summary  # noqa: E402

# Two launches of one CTA pair trace: CTA (0, 0) prints its items and pairs; the summary reads the last launch.
LOG = """\
cta 1 0: 1000 50000 items 2 pages 8
cta 1 0: 900000 950000 items 2 pages 8
items wg0 item 0: 100 200 1100 1150 1400
items wg0 item 1: 1500 1600 2600 2650 2900
items wg0 item 0: 10100 10200 11100 11150 11400
items wg0 item 1: 11900 12000 13000 13050 13300
timeline wg0 pair 3: 10 0 0 0 0 0 0
timeline wg0 pair 4: 20 0 0 0 0 0 0
timeline wg0 pair 3: 11000 0 0 0 0 0 0
timeline wg0 pair 4: 12050 0 0 0 0 0 0
"""


def test_summary_reports_item_gap_and_pair_intervals(tmp_path, capsys):
    path = tmp_path / "timeline.log"
    path.write_text(LOG)
    seesaw_timeline_summary.main(str(path))
    out = capsys.readouterr().out
    assert "wg0 item 1: q wait    100 clk, pairs    1000, sum exchange    50, store   250, gap before   500" in out
    assert "wg0 pair start-to-start clk (pair:interval): 4:1050" in out
