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
