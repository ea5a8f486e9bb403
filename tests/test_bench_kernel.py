"""benchmarks/bench_kernel.py on the CPU: the dry run with its peers (a peer that is not set up here, FlashMLA
without CUDA or FlashInfer without its bundle, gives a "not run" row, not an error; the rows that do run are
checked against the float32 reference), the config groups, the error measure, the ours-vs-FlashMLA summary, and
the merge of repeated passes."""
import importlib
import json

import pytest

import torch

from benchmarks import bench_kernel, compare_runs, kernel_configs, kernel_report, kernel_rounds

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # tests/conftest.py


def test_flashinfer_peer_without_bundle_is_not_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHINFER_BUNDLE", str(tmp_path / "no_bundle"))
    peer = importlib.reload(importlib.import_module("benchmarks.peers.flashinfer_mla"))
    ok, reason = peer.available()
    assert not ok
    assert reason.startswith("not run") or "CUDA" in reason


def test_dry_run_with_flashinfer_absent(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLASHINFER_BUNDLE", str(tmp_path / "no_bundle"))
    importlib.reload(importlib.import_module("benchmarks.peers.flashinfer_mla"))
    path = tmp_path / "dry.json"
    assert bench_kernel.main(["--dry-run", "--impls", "ours,flashinfer,torch", "--json", str(path)]) == 0
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
    passes = [_pass({"ours": (1.00, 1980), "flashinfer": (1.2, 1980)}),
              _pass({"ours": (1.10, 1700), "flashinfer": (1.1, 1700)}),
              _pass({"ours": (0.98, 1965), "flashinfer": (1.3, 1965)})]
    merged = kernel_rounds.merge_rounds(passes)
    ours, peer = merged[0]["rows"]
    assert ours["ms"] == 1.00 and ours["sm_mhz"] == 1980 and ours["ms_rounds"] == [1.00, 1.10, 0.98]
    assert abs(ours["tflops"] - 2000.0) < 1e-6 and abs(ours["gbps"] - 1000.0) < 1e-9
    assert peer["ms"] == 1.2 and merged[0]["rounds"] == 3


def test_rounds_keep_a_wrong_pass_wrong():
    merged = kernel_rounds.merge_rounds([_pass({"ours": (1.0, None)}), _pass({"ours": (1.0, None)}, ok=False)])
    assert merged[0]["rows"][0]["ok"] is False


def test_rounds_refuse_passes_in_different_orders():
    with pytest.raises(ValueError, match="config order"):
        kernel_rounds.merge_rounds([_pass({"ours": (1.0, None)}, name="a"), _pass({"ours": (1.0, None)}, name="b")])


def test_dry_run_with_rounds(tmp_path):
    path = tmp_path / "dry.json"
    assert bench_kernel.main(["--dry-run", "--impls", "ours,torch", "--rounds", "2", "--repeats", "1",
                              "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["meta"]["rounds"] == 2
    rows = [row for config in result["configs"] for row in config["rows"] if row.get("ms")]
    assert rows and all(len(row["ms_rounds"]) == 2 and row["ok"] for row in rows)


def test_rounds_turn_the_implementation_order_each_pass():
    impls = ["ours", "flashinfer", "torch"]
    assert [kernel_rounds.pass_order(impls, r) for r in range(4)] == [
        ["ours", "flashinfer", "torch"], ["flashinfer", "torch", "ours"], ["torch", "ours", "flashinfer"],
        ["ours", "flashinfer", "torch"]]
    # Rows of passes in turned orders still pair up by implementation; the table keeps the first pass's order.
    passes = [_pass({"ours": (1.0, None), "torch": (9.0, None)}), _pass({"torch": (11.0, None), "ours": (1.2, None)}),
              _pass({"ours": (1.1, None), "torch": (10.0, None)})]
    rows = kernel_rounds.merge_rounds(passes)[0]["rows"]
    assert [(row["impl"], row["ms"], row["ms_rounds"]) for row in rows] == [
        ("ours", 1.1, [1.0, 1.2, 1.1]), ("torch", 10.0, [9.0, 11.0, 10.0])]


def test_dry_run_headline_json_and_table(tmp_path, capsys):
    path = tmp_path / "dry.json"
    assert bench_kernel.main(["--dry-run", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["meta"]["impls"] == list(bench_kernel.DEFAULT_IMPLS) and result["meta"]["repeats"] == 3
    rows = {(c["name"], r["impl"]): r for c in result["configs"] for r in c["rows"]}
    flashmla = [r for (_, impl), r in rows.items() if impl == "flashmla"]
    assert flashmla and all(r["ms"] is None and r["error"].startswith("not run") for r in flashmla)
    ours = [r for (_, impl), r in rows.items() if impl == "ours"]
    assert all(r["ok"] and len(r["ms_repeats"]) == 3 and 0 <= r["err_max_rel"] < 2e-2 for r in ours)
    summary = result["summary"]
    assert summary["max_rel_error_vs_float32"]["ours"][0] == max(r["err_max_rel"] for r in ours)
    assert "ours (metadata tensors)" in summary["host_us_per_call"]["us_per_call"]
    assert summary["errors"] == [] and summary["wrong"] == []
    out = capsys.readouterr().out
    assert out.rstrip().endswith(result["table"].splitlines()[-1])  # the table comes last
    assert "| config | ours us | FlashMLA us | speed vs FlashMLA |" in out
    assert bench_kernel.main(["--from-json", str(path)]) == 0
    assert result["table"] in capsys.readouterr().out


def test_config_groups():
    main = kernel_configs.main_configs()
    assert len(main) == 2 * 3 * 2 * 4 * 3
    assert {c.spread for c in main} == {"equal", "varlen4", "varlen2"}
    stds = {"equal": [], "varlen4": [], "varlen2": []}
    for c in main:  # std L/4 and L/2 (lengths clamped at 1, so the L/2 spread comes out a little narrower)
        stds[c.spread].append(torch.tensor([float(x) for x in c.lengths]).std().item() / c.mean_len)
    mean = {k: sum(v) / len(v) for k, v in stds.items()}
    assert mean["equal"] == 0 and 0.2 < mean["varlen4"] < 0.3 and 0.4 < mean["varlen2"] < 0.55
    small = kernel_configs.small_batch_configs()
    assert {(c.b, c.mean_len, c.h_q) for c in small} == {(b, L, 128) for b in (1, 2, 4, 8)
                                                          for L in (32768, 65536, 131072)}
    assert all(c.h_q == 20 for c in kernel_configs.h20_configs())
    extra = {c.name: c for c in kernel_configs.extra_configs()}
    assert extra["uneven_b4_sq4_h16"].lengths == [4641, 45118, 1730, 1696]
    assert "sweep_b128_sq1_h128_base1024" in extra and extra["b16_64K_sq1_h16"].b == 16
    with pytest.raises(SystemExit):
        bench_kernel.parse_args(["--configs", "main,nope"])


def test_float32_subset_gives_the_reference_of_those_sequences():
    from hf_flashmla import mla_decode_reference

    cfg = kernel_configs.Config("t", "dry", 5, [70, 1, 200, 64, 129], 2, 16, 90, "given")
    inputs = kernel_configs.build_inputs(cfg, torch.device("cpu"), torch.float32, seed=3)[0]
    idx = [4, 0, 2]
    q, k_cache, table, lengths = kernel_configs.float32_subset(inputs, idx)
    assert k_cache.shape[0] == 3 + 2 + 4  # only the pages of the chosen sequences
    out, lse = mla_decode_reference(q, k_cache, table, lengths, 512, 576 ** -0.5, True)
    full_out, full_lse = mla_decode_reference(inputs["q"], inputs["k_cache"], inputs["block_table"],
                                              inputs["cache_seqlens"], 512, 576 ** -0.5, True)
    torch.testing.assert_close(out, full_out[idx])
    torch.testing.assert_close(lse, full_lse[idx])


def test_compare_reports_the_largest_error_relative_to_the_largest_output():
    ref = torch.zeros(2, 1, 1, 4)
    ref[0, 0, 0] = torch.tensor([1.0, -4.0, 2.0, 0.5])
    ref[1, 0, 0] = torch.tensor([0.25, 0.0, 0.0, 0.0])
    out = ref.clone()
    out[1, 0, 0, 0] += 0.02
    lse = torch.zeros(2, 1, 1)
    err_out, err_max_rel, err_lse, ok = bench_kernel.compare(out, lse, ref, lse, [0, 1], torch.bfloat16)
    assert err_max_rel == pytest.approx(0.02 / 4.0) and err_lse == 0.0 and ok
    out[0, 0, 0, 0] = float("nan")
    assert bench_kernel.compare(out, lse, ref, lse, [0, 1], torch.bfloat16)[:2] == (float("inf"), float("inf"))


def _result(name, group, ours_ms, flashmla_ms, rows=16, spread="equal"):
    def row(impl, ms, err):
        return dict(impl=impl, variant=impl, ms=ms, ok=True, err_out=err, err_max_rel=err, err_lse=0.0, error=None,
                    note=None, tflops=1.0, gbps=1.0)
    return dict(name=name, group=group, b=64, mean_len=4096, s_q=1, h_q=rows, spread=spread, varlen=spread != "equal",
                rows=[row("ours", ours_ms, 5e-3), row("flashmla", flashmla_ms, 3e-3)], schedule_ms=0.02,
                flashmla_schedule_ms=0.01)


def test_summary_headline_is_ours_against_flashmla():
    results = [_result("a", "main", 1.0, 1.1), _result("b", "main", 1.0, 0.9, rows=128, spread="varlen2"),
               _result("c", "small", 2.0, 2.2, rows=128)]
    summary = kernel_report.summarize(results, {}, ["ours", "flashmla"], host=None)
    vs = summary["ours_vs_flashmla"]
    assert vs["main"]["configs"] == 2 and vs["main"]["geomean"] == pytest.approx((1.1 * 0.9) ** 0.5)
    assert vs["main"]["below_1"] == ["b"] and vs["main"]["min"] == (pytest.approx(0.9), "b")
    assert vs["small"]["geomean"] == pytest.approx(1.1) and vs["all"]["configs"] == 3
    assert vs["main_by_bound"]["memory"] == pytest.approx(1.1) and vs["main_by_spread"]["varlen2"] == pytest.approx(0.9)
    assert summary["max_rel_error_vs_float32"] == {"ours": (5e-3, "c"), "flashmla": (3e-3, "c")}
    lines = kernel_report.summary_lines(summary, {"repeats": 3, "rounds": 1})
    assert any("main   geomean 0.995 over 2, min 0.900 at b, below 1.0 on 1" in line for line in lines)


def test_fp8_rows_checked_with_their_own_tolerance_and_summarized_against_triton():
    ref = torch.ones(1, 1, 1, 8)
    lse = torch.zeros(1, 1, 1)
    out = ref * 1.04  # an FP8 cache's error on random inputs is ~3e-2: beyond the bf16 tolerance, within FP8's
    assert not bench_kernel.compare(out, lse, ref, lse, [0], torch.bfloat16)[3]
    assert bench_kernel.compare(out, lse, ref, lse, [0], torch.bfloat16, bench_kernel.LOSSY_TOLERANCES["triton_fp8"])[3]

    def result(name, rows, triton_ms, fp8_ms):
        base = _result(name, "main", 1.0, 1.0, rows=rows)
        base["rows"] += [dict(base["rows"][0], impl="triton", variant="ours-triton", ms=triton_ms),
                         dict(base["rows"][0], impl="triton_fp8", variant="ours-triton-fp8", ms=fp8_ms)]
        return base
    results = [result("mem", 16, 2.0, 1.0), result("comp", 128, 1.0, 1.0)]
    summary = kernel_report.summarize(results, {}, ["ours", "triton", "triton_fp8"], host=None)
    fp8 = summary["triton_fp8_vs_triton"]
    assert fp8["by_bound"]["memory"] == pytest.approx(2.0) and fp8["by_bound"]["compute"] == pytest.approx(1.0)
    assert fp8["by_rows"] == {16: pytest.approx(2.0), 128: pytest.approx(1.0)}
    lines = kernel_report.summary_lines(summary, {"repeats": 1})
    line = next(line for line in lines if line.startswith("   our Triton FP8 vs our Triton"))
    assert line.endswith("by query rows: 16 2.000, 128 1.000")


def test_dry_run_lists_the_fp8_peer_as_not_run_without_cuda(tmp_path):
    path = tmp_path / "dry.json"
    assert bench_kernel.main(["--dry-run", "--impls", "ours,triton_fp8", "--json", str(path)]) == 0
    rows = [row for config in json.loads(path.read_text())["configs"] for row in config["rows"]]
    fp8 = [row for row in rows if row["impl"] == "triton_fp8"]
    assert fp8 and all(row["ms"] is None for row in fp8)


def _run(ours_ms, flashmla_ms, ok=True):
    """A bench_kernel --json result with one row each of ours and FlashMLA per config."""
    return dict(configs=[dict(name=name, rows=[dict(impl="ours", variant="ours", ms=ms, ok=ok),
                                               dict(impl="flashmla", variant="flashmla", ms=flashmla_ms[name],
                                                    ok=True)])
                         for name, ms in ours_ms.items()])


def test_compare_runs_gives_each_build_against_the_first_and_the_peer_drift():
    base = [_run({"a": 0.200, "b": 0.100}, {"a": 0.190, "b": 0.101}),
            _run({"a": 0.220, "b": 0.100}, {"a": 0.195, "b": 0.099})]
    new = [_run({"a": 0.200, "b": 0.050}, {"a": 0.200, "b": 0.100})]
    result = compare_runs.compare([("base", base), ("new", new)])
    by_name = {row["config"]: row for row in result["rows"]}
    assert by_name["a"]["us"] == {"base": pytest.approx(210.0), "new": pytest.approx(200.0)}
    assert by_name["a"]["ratio_to_first"]["new"] == pytest.approx(1.05)
    assert by_name["b"]["ratio_to_first"]["new"] == pytest.approx(2.0)
    assert by_name["a"]["peer_us"] == pytest.approx([190.0, 195.0, 200.0])  # every run's FlashMLA, in order
    assert result["geomean_to_first"]["new"] == pytest.approx((1.05 * 2.0) ** 0.5)
    lines = compare_runs.table_lines(result)
    assert lines[-1] == "wrong results: none"


def test_compare_runs_takes_an_impls_only_variant_whatever_its_name():
    """ours_fp8's one variant is "ours-fp8": compared; ours' other call forms are not (its "ours" row is)."""
    def run(fp8_ms, ours_ms):
        return dict(configs=[dict(name="a", rows=[dict(impl="ours", variant="ours", ms=ours_ms, ok=True),
                                                  dict(impl="ours", variant="ours (newest API)", ms=0.001, ok=True),
                                                  dict(impl="ours_fp8", variant="ours-fp8", ms=fp8_ms, ok=True)])])
    result = compare_runs.compare([("base", [run(0.2, 0.3)]), ("new", [run(0.1, 0.31)])], impl="ours_fp8",
                                  peer="ours")
    row = result["rows"][0]
    assert row["us"] == {"base": pytest.approx(200.0), "new": pytest.approx(100.0)}
    assert row["peer_us"] == pytest.approx([300.0, 310.0])


def test_compare_runs_reports_a_wrong_build_and_fails():
    base, new = _run({"a": 0.2}, {"a": 0.2}), _run({"a": 0.1}, {"a": 0.2}, ok=False)
    result = compare_runs.compare([("base", [base]), ("new", [new])])
    assert result["rows"][0]["wrong"] == ["new"]
    assert compare_runs.table_lines(result)[-1] == "wrong results: new"


def test_compare_runs_shows_the_tails_of_runs_with_kernel_times():
    def run(ours_tail, flashmla_tail):
        result = _run({"a": 0.2}, {"a": 0.2})
        ours, flashmla = result["configs"][0]["rows"]
        ours["tail_us"], flashmla["tail_us"] = ours_tail, flashmla_tail
        return result
    result = compare_runs.compare([("base", [run(8.0, 6.0), run(9.0, 6.2)]), ("new", [run(5.0, 6.1)])])
    row = result["rows"][0]
    assert row["tail_us"] == {"base": pytest.approx(8.5), "new": pytest.approx(5.0)}
    assert row["peer_tail_us"] == pytest.approx(6.1)
    assert "| a | 8.5 | 5.0 | 6.1 |" in compare_runs.table_lines(result)
    without = compare_runs.compare([("base", [_run({"a": 0.2}, {"a": 0.2})]), ("new", [_run({"a": 0.1}, {"a": 0.2})])])
    assert not any("after the decode kernel" in line for line in compare_runs.table_lines(without))


def test_compare_runs_cli(tmp_path, capsys):
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    base.write_text(json.dumps(_run({"a": 0.2}, {"a": 0.2})))
    new.write_text(json.dumps(_run({"a": 0.1}, {"a": 0.2}, ok=False)))
    assert compare_runs.main([f"base={base}", f"new={new}"]) == 1  # a wrong result fails the comparison
    assert "| a (WRONG: new) | 200.0 | 100.0 | 2.000 | 200.0 / 200.0 |" in capsys.readouterr().out
    (tmp_path / "other.json").write_text("{}")
    for argv, message in [([f"base={base}"], "at least two labels"),
                          (["base", f"new={new}"], "expected LABEL=run.json"),
                          ([f"base={base}", f"base={new}"], "given twice"),
                          ([f"base={base}", f"new={tmp_path / 'missing.json'}"], "cannot read"),
                          ([f"base={base}", f"new={tmp_path / 'other.json'}"], "not a bench_kernel")]:
        with pytest.raises(SystemExit):
            compare_runs.main(argv)
        assert message in capsys.readouterr().err


def test_kernel_profile_names_and_description():
    from benchmarks import kernel_profile
    assert kernel_profile.short_name(
        "void hf_flashmla::decode_detail::mla_combine_rows_kernel<__nv_bfloat16>(hf_flashmla::MlaDecodeParams, int)"
    ) == "mla_combine_rows_kernel"
    assert kernel_profile.short_name("void legacy::sm90::decode::dense::flash_fwd_splitkv_mla_kernel<(int)1>") == \
        "flash_fwd_splitkv_mla_kernel"
    assert kernel_profile.short_name("Memset (Device)") == "Memset"
    text = kernel_profile.describe({"kernel_us": {"decode": 119.0, "combine": 126.9}, "span_us": 127.8,
                                    "tail_us": 8.8})
    assert text == "kernels (us): decode 119.0, combine 126.9; span 127.8, after the decode kernel 8.8"
    assert kernel_profile.describe(None) == "kernel times: not measured"


class _FakeCudaBuffer:
    device = torch.device("cuda")

    def zero_(self):
        return self


def test_kernel_times_splits_the_trace_into_calls_past_the_flush(monkeypatch):
    """Per call: the flush's kernel, then the decode kernel (100 us) and the combine launched beside it, ending 8 us
    after the decode kernel; the flush's kernels are skipped, the medians taken over the calls."""
    from benchmarks import kernel_profile
    calls = 3

    def trace(run, count):
        if run.__name__ == "flush_only":
            return [(1000.0 * i, 1000.0 * i + 50, "fill") for i in range(count)]
        events = []
        for i in range(count):
            t = 1000.0 * i
            decode = 100.0 + i  # 100, 101, 102: the median is the middle call's
            events += [(t, t + 50, "fill"),
                       (t + 60, t + 60 + decode, "void ns::mla_decode_seesaw_kernel<bf16, false>(params)"),
                       (t + 61, t + 60 + decode + 8, "void ns::mla_combine_rows_kernel<bf16>(params, int)")]
        return sorted(events)

    monkeypatch.setattr(kernel_profile, "_profiled", trace)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    times = kernel_profile.kernel_times(lambda: None, _FakeCudaBuffer(), calls=calls)
    assert times["kernel_us"] == {"mla_decode_seesaw_kernel": 101.0, "mla_combine_rows_kernel": 108.0}
    assert times["span_us"] == 109.0 and times["tail_us"] == 8.0
    # A kernel launched before the decode kernel (a workspace clear) counts in the span, not in the tail.
    def trace_with_clear(run, count):
        events = trace(run, count)
        if run.__name__ == "flush_only":
            return events
        return sorted(events + [(1000.0 * i + 55, 1000.0 * i + 56, "void ns::clear_kernel(int*, int)")
                                for i in range(count)])

    monkeypatch.setattr(kernel_profile, "_profiled", trace_with_clear)
    times = kernel_profile.kernel_times(lambda: None, _FakeCudaBuffer(), calls=calls)
    assert times["span_us"] == 114.0 and times["tail_us"] == 8.0
    # A trace that does not split into equal calls is not reported.
    monkeypatch.setattr(kernel_profile, "_profiled", lambda run, count: trace(run, count)[:-1])
    assert kernel_profile.kernel_times(lambda: None, _FakeCudaBuffer(), calls=calls) is None
    assert kernel_profile.kernel_times(lambda: None, torch.empty(1), calls=calls) is None  # off CUDA


def test_dry_run_takes_kernel_times_and_skips_them_on_the_cpu(tmp_path):
    path = tmp_path / "dry.json"
    assert bench_kernel.main(["--dry-run", "--impls", "ours", "--kernel-times", "--json", str(path)]) == 0
    rows = [row for config in json.loads(path.read_text())["configs"] for row in config["rows"]]
    assert rows and not any("kernel_us" in row for row in rows)


def test_profile_call_finds_bench_configs_by_name():
    from tools import profile_call
    assert profile_call.find_config("b64_L4096_sq1_h64_varlen4").h_q == 64
    assert profile_call.find_config("uneven_b4_sq4_h16").lengths == [4641, 45118, 1730, 1696]
    with pytest.raises(SystemExit, match="config: no bench_kernel config named 'b1_nothing'"):
        profile_call.find_config("b1_nothing")
