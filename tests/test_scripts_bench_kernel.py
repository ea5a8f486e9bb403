"""scripts/bench_kernel.py's CPU dry run with its peers: a peer that is not set up here (FlashInfer without its
bundle in .fi/) gives a "not run" row, not an error; the rows that do run are checked against the reference."""
import importlib
import json
import os
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, SCRIPTS)

import bench_kernel  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # tests/conftest.py


def test_flashinfer_peer_without_bundle_is_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHINFER_BUNDLE", str(tmp_path / "no_bundle"))
    peer = importlib.reload(importlib.import_module("peers.flashinfer_mla"))
    ok, reason = peer.available()
    assert not ok
    assert reason.startswith("not run") or "CUDA" in reason


def test_dry_run_with_flashinfer_absent(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLASHINFER_BUNDLE", str(tmp_path / "no_bundle"))
    importlib.reload(importlib.import_module("peers.flashinfer_mla"))
    path = tmp_path / "dry.json"
    assert bench_kernel.main(["--dry-run", "--impls", "ours,flashinfer,torch", "--json", str(path)]) in (0, None)
    result = json.loads(path.read_text())
    rows = [row for config in result["configs"] for row in config["rows"]]
    flashinfer = [row for row in rows if row["impl"] == "flashinfer"]
    assert flashinfer and all(row["ms"] is None and row["error"] for row in flashinfer)
    assert all(row["ok"] for row in rows if row["impl"] in ("ours", "torch") and row.get("ms"))
    out = capsys.readouterr().out
    assert "incorrect results: 0" in out and "errors: 0" in out


def _pass(ms_by_variant, ok=True, name="cfg"):
    rows = [dict(impl=variant.split("/")[0], variant=variant, ms=ms, err_out=1e-3, err_lse=1e-6, ok=ok, error=None,
                 note=None, sm_mhz=mhz) for variant, (ms, mhz) in ms_by_variant.items()]
    return [dict(name=name, flops=2e12, bytes=1e9, rows=rows, schedule_ms=0.01)]


def test_rounds_report_the_median_pass_with_its_clock():
    import bench_rounds
    passes = [_pass({"ours": (1.00, 1980), "flashinfer": (1.2, 1980)}),
              _pass({"ours": (1.10, 1700), "flashinfer": (1.1, 1700)}),
              _pass({"ours": (0.98, 1965), "flashinfer": (1.3, 1965)})]
    merged = bench_rounds.merge_rounds(passes)
    ours, peer = merged[0]["rows"]
    assert ours["ms"] == 1.00 and ours["sm_mhz"] == 1980 and ours["ms_rounds"] == [1.00, 1.10, 0.98]
    assert abs(ours["tflops"] - 2000.0) < 1e-6 and abs(ours["gbps"] - 1000.0) < 1e-9
    assert peer["ms"] == 1.2 and merged[0]["rounds"] == 3


def test_rounds_keep_a_wrong_pass_wrong():
    import bench_rounds
    merged = bench_rounds.merge_rounds([_pass({"ours": (1.0, None)}), _pass({"ours": (1.0, None)}, ok=False)])
    assert merged[0]["rows"][0]["ok"] is False


def test_rounds_refuse_passes_in_different_orders():
    import bench_rounds
    with pytest.raises(ValueError, match="config order"):
        bench_rounds.merge_rounds([_pass({"ours": (1.0, None)}, name="a"), _pass({"ours": (1.0, None)}, name="b")])


def test_dry_run_with_rounds(tmp_path):
    path = tmp_path / "dry.json"
    assert bench_kernel.main(["--dry-run", "--impls", "ours,torch", "--rounds", "2", "--json", str(path)]) in (0, None)
    result = json.loads(path.read_text())
    assert result["meta"]["rounds"] == 2
    rows = [row for config in result["configs"] for row in config["rows"] if row.get("ms")]
    assert rows and all(len(row["ms_rounds"]) == 2 and row["ok"] for row in rows)


def test_rounds_turn_the_implementation_order_each_pass():
    import bench_rounds
    impls = ["ours", "flashinfer", "torch"]
    assert [bench_rounds.pass_order(impls, r) for r in range(4)] == [
        ["ours", "flashinfer", "torch"], ["flashinfer", "torch", "ours"], ["torch", "ours", "flashinfer"],
        ["ours", "flashinfer", "torch"]]
    # Rows of passes in turned orders still pair up by implementation; the table keeps the first pass's order.
    passes = [_pass({"ours": (1.0, None), "torch": (9.0, None)}), _pass({"torch": (11.0, None), "ours": (1.2, None)}),
              _pass({"ours": (1.1, None), "torch": (10.0, None)})]
    rows = bench_rounds.merge_rounds(passes)[0]["rows"]
    assert [(row["impl"], row["ms"], row["ms_rounds"]) for row in rows] == [
        ("ours", 1.1, [1.0, 1.2, 1.1]), ("torch", 10.0, [9.0, 11.0, 10.0])]
