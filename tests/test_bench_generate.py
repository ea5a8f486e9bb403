"""benchmarks/bench_generate.py on the smoke preset on the CPU: the JSON fields of every run, flash_mla really
running (its latent paged cache in the output), failures and OOM as results, argument parsing, the plot."""
import json
import os

import pytest
import torch

from benchmarks import bench_generate, generate_models, generate_report
from benchmarks.generate_timing import device_busy_after, device_span_after

pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # tests/conftest.py

SMOKE = ["--smoke", "--device", "cpu", "--cases", "32x2,16x1", "--new-tokens", "3"]


def test_smoke_runs_flash_mla_and_sdpa(tmp_path, capsys):
    path = tmp_path / "e2e.json"
    assert bench_generate.main(SMOKE + ["--impls", "flash_mla,sdpa", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    meta = report["meta"]
    assert meta["preset"] == "smoke" and meta["layers"] == 2 and meta["impls"] == ["flash_mla", "sdpa"]
    assert meta["cases"] == ["32x2", "16x1"] and meta["model"]["kv_lora_rank"] == 512
    rows = {(r["case"], r["impl"]): r for r in report["rows"]}
    assert set(rows) == {(c, i) for c in ("32x2", "16x1") for i in ("flash_mla", "sdpa")}
    for (case, impl), row in rows.items():
        assert row["status"] == "ok", row  # fails where flash_mla is unavailable
        assert row["generated"] == 3 and row["decode_steps"] == 2
        assert row["decode_ms_per_step"] > 0 and row["ttft_s"] > 0 and row["decode_tokens_per_s"] > 0
        assert isinstance(row["first_call_extra_s"], float) and row["first_call_s"] > 0
        assert row["peak_gb"] is None and "gpu_busy_ms_per_step" not in row  # CUDA-only figures
        assert row["generate_kwargs"]["min_new_tokens"] == row["generate_kwargs"]["max_new_tokens"] == 3
    for case in ("32x2", "16x1"):
        flash = rows[(case, "flash_mla")]
        assert flash["cache_class"] == "LatentPagedCache"  # generate() ran flash_mla's own cache
        assert flash["cached_tokens"] == flash["context"] + 2
        assert flash["speedup_vs_best_stock"] > 0 and flash["best_stock"] == "sdpa"
        assert rows[(case, "sdpa")]["cache_class"] == "DynamicCache"
    out = capsys.readouterr().out
    assert report["table"] in out and out.rstrip().endswith(report["table"].splitlines()[-1])
    assert report["failed_runs"] == []


def test_static_cache_run_on_cpu(tmp_path):
    path = tmp_path / "e2e.json"
    assert bench_generate.main(["--smoke", "--device", "cpu", "--cases", "16x1", "--new-tokens", "2",
                                "--impls", "sdpa_static", "--json", str(path)]) == 0
    row = json.loads(path.read_text())["rows"][0]
    assert row["status"] == "ok" and row["cache_class"] == "StaticCache" and row["static_cache"] is True
    assert row["generate_kwargs"]["cache_implementation"] == "static"


def test_flash_mla_kwargs_reach_only_flash_mla(monkeypatch):
    args = bench_generate.parse_args(SMOKE + ["--flash-mla-kwargs", "prefill_chunk_size=8",
                                              "--generate-kwargs", "repetition_penalty=1.0"])
    assert args.flash_kwargs == {"prefill_chunk_size": 8} and args.gen_kwargs == {"repetition_penalty": 1.0}
    model = generate_models.build_model(generate_models.make_config("smoke"), torch.float32)
    seen = {}
    generate = model.generate

    def record(*a, **kw):
        seen.setdefault(model.config._attn_implementation, kw)
        return generate(*a, **kw)

    monkeypatch.setattr(model, "generate", record)
    for impl in ("flash_mla", "sdpa"):
        row = bench_generate.measure(model, impl, 16, 1, args, torch.device("cpu"))
        assert row["status"] == "ok", row
    assert seen["flash_mla"]["prefill_chunk_size"] == 8 and "prefill_chunk_size" not in seen["sdpa"]
    assert seen["sdpa"]["repetition_penalty"] == 1.0


def test_unavailable_implementation_fails_the_run(tmp_path, monkeypatch, capsys):
    def use_attn(model, name):
        return "not registered here" if name == "flash_mla" else None

    monkeypatch.setattr(bench_generate.rt, "use_attn", use_attn)
    path = tmp_path / "e2e.json"
    assert bench_generate.main(SMOKE + ["--cases", "16x1", "--impls", "flash_mla", "--json", str(path)]) == 1
    report = json.loads(path.read_text())
    assert report["rows"][0]["status"] == "unavailable"
    assert report["failed_runs"] == ["16x1 flash_mla: unavailable: not registered here"]
    assert "FAILED 16x1 flash_mla" in capsys.readouterr().out


def test_out_of_memory_is_a_result_and_the_next_run_goes_on(monkeypatch):
    args = bench_generate.parse_args(SMOKE + ["--impls", "sdpa"])
    model = generate_models.build_model(generate_models.make_config("smoke"), torch.float32)
    generate = model.generate

    def generate_or_oom(*a, input_ids=None, **kw):
        if input_ids.shape == (2, 32):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 99.00 GiB")
        return generate(*a, input_ids=input_ids, **kw)

    monkeypatch.setattr(model, "generate", generate_or_oom)
    report = {"meta": {}, "rows": []}
    rows = bench_generate.run_all(model, args, torch.device("cpu"), report, t0=0.0)
    assert [(r["case"], r["status"]) for r in rows] == [("32x2", "OOM"), ("16x1", "ok")]
    assert "out of memory" in rows[0]["note"]
    assert "OOM" in generate_report.markdown_table(rows)


@pytest.mark.parametrize("text, cases", [("4Kx8,32Kx1", [(4096, 8), (32768, 1)]), ("100x2", [(100, 2)]),
                                         ("160kx1", [(163840, 1)])])
def test_cases_parse(text, cases):
    assert bench_generate.parse_cases(text) == cases


@pytest.mark.parametrize("argv, message", [
    (["--cases", "4K8"], "is not CONTEXTxBATCH"), (["--cases", "0x1"], "must be >= 1"),
    (["--impls", "flash_mla_static"], "unknown implementation"), (["--impls", "magic"], "unknown implementation"),
    (["--new-tokens", "1"], "--new-tokens: at least 2"), (["--layers", "0"], "--layers: must be >= 1"),
    (["--flash-mla-kwargs", "prefill_chunk_size"], "is not KEY=VALUE"),
    (["--generate-kwargs", "[1]"], "is not KEY=VALUE"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        bench_generate.parse_args(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_gpu_busy_counts_device_time_after_the_marker():
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    a = torch.randn(64, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        a @ a
        with record_function("marker"):
            pass
        a @ a
    events = prof.events()
    busy, count = device_busy_after(events, "marker", DeviceType.CPU)
    marker_start = next(e.time_range.start for e in events if e.name == "marker")
    assert count == sum(1 for e in events if e.time_range.start >= marker_start) and busy > 0
    assert device_busy_after(events, "missing", DeviceType.CPU) == (None, 0)
    span = device_span_after(events, "marker", DeviceType.CPU)
    assert span >= busy / count and device_span_after(events, "missing", DeviceType.CPU) is None


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"case": c, "impl": i, "status": "ok", "decode_ms_per_step": ms}
            for c, ms in (("4Kx8", 10.0), ("32Kx1", 5.0)) for i in ("flash_mla", "sdpa")]
    rows.append({"case": "32Kx1", "impl": "sdpa_static", "status": "OOM"})
    path = generate_report.write_plot(rows, str(tmp_path / "e2e.png"), "test")
    assert os.path.getsize(path) > 1000


def test_flash_mla_fp8_runs_beside_the_bf16_cache_in_one_run(tmp_path):
    """flash_mla_fp8 is flash_mla with the FP8 latent cache, measured in the same process as the others."""
    path = tmp_path / "e2e.json"
    assert bench_generate.main(["--smoke", "--device", "cpu", "--cases", "16x1", "--new-tokens", "2",
                                "--impls", "flash_mla,flash_mla_fp8,sdpa", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    flash, fp8, sdpa = report["rows"]
    assert [r["impl"] for r in (flash, fp8, sdpa)] == ["flash_mla", "flash_mla_fp8", "sdpa"]
    assert fp8["status"] == "ok" and fp8["kv_cache_dtype"] == "fp8_e4m3" and fp8["attn_implementation"] == "flash_mla"
    assert fp8["generate_kwargs"]["cache_config"] == {"kv_cache_dtype": "fp8_e4m3"}
    layers = generate_models.make_config("smoke").num_hidden_layers
    assert fp8["kv_cache_used_gb"] * 1e9 == pytest.approx((16 + 1) * 656 * layers)
    assert flash["kv_cache_used_gb"] * 1e9 == pytest.approx((16 + 1) * 576 * 4 * layers)  # float32 on the CPU
    assert "cache_config" not in flash["generate_kwargs"] and "cache_config" not in sdpa["generate_kwargs"]
    assert "speedup_vs_best_stock" in fp8  # compared with the stock path like flash_mla


@pytest.mark.parametrize("preset", sorted(generate_models.PRESETS))
def test_every_preset_builds_its_shape(preset):
    """Each preset's config and model (on the meta device: no memory), with the latent the description names."""
    config = generate_models.make_config(preset)
    model = generate_models.build_model(config, device="meta")
    text = config.get_text_config(decoder=True)
    assert model.config.model_type == generate_models.PRESETS[preset].model_type
    latent = (text.kv_lora_rank, text.qk_rope_head_dim)
    assert latent == ((256, 32) if preset == "minicpm3-4b" else (512, 64))
    assert generate_models.parameter_count(model) > 0
