"""`hf-flashmla evaluate` on a tiny random DeepSeek-V3 checkpoint on the CPU: exit codes 0 / 1 / 2, the JSON
report, token-file formats and the near-tie rule of the greedy comparison."""
import json

import pytest
import torch

from hf_flashmla.checkpoint import TINY, build_checkpoint
from hf_flashmla.cli import evaluate
from hf_flashmla.cli import runtime as rt
from hf_flashmla.cli import token_data
from hf_flashmla.cli.metrics import greedy_agreement


pytestmark = pytest.mark.usefixtures("one_cpu_thread")  # tests/conftest.py


SMALL = ["--device", "cpu", "--dtype", "float32", "--seq-len", "12", "--max-windows", "2", "--batch-size", "2",
         "--prompts", "2", "--new-tokens", "4", "--random-tokens", "64"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(str(tmp_path_factory.mktemp("ckpt")), dtype=torch.float32, log=lambda _: None,
                            **dict(TINY, vocab_size=256))


def test_stock_against_stock_passes_and_writes_json(checkpoint, tmp_path, capsys):
    path = tmp_path / "eval.json"
    code = evaluate.main([checkpoint, "--candidate", "sdpa", "--baselines", "", "--json", str(path)] + SMALL)
    assert code == 0
    report = json.loads(path.read_text())
    assert report["result"] == "PASS" and report["exit_code"] == 0
    logits = report["results"]["sdpa"]["logits"]
    assert logits["prefill"]["tokens"] == 2 * 6 and logits["decode"]["tokens"] == 2 * 6
    assert report["results"]["sdpa"]["greedy"]["tokens"] == 2 * 4
    assert "RESULT: PASS" in capsys.readouterr().out


def test_flash_mla_matches_eager_in_fp32(checkpoint, capsys):
    reason = rt.attn_unavailable_reason("flash_mla")
    if reason:
        assert evaluate.main([checkpoint] + SMALL) == 2  # unavailable is a setup error
        pytest.skip(reason)
    assert evaluate.main([checkpoint, "--step-tokens", "2"] + SMALL) == 0
    out = capsys.readouterr().out
    assert "flash_mla (candidate)" in out and "decode positions" in out and "RESULT: PASS" in out
    if not torch.cuda.is_available():  # the CPU runs the reference decode, so requiring the kernel fails
        assert evaluate.main([checkpoint, "--require-kernel", "--baselines", ""] + SMALL) == 1
        assert "FAIL  flash_mla decode on the compiled kernel" in capsys.readouterr().out


def test_disagreement_beyond_tolerance_exits_1(checkpoint, capsys):
    code = evaluate.main([checkpoint, "--candidate", "sdpa", "--baselines", "", "--tol-mean-rel", "-1"] + SMALL)
    assert code == 1
    out = capsys.readouterr().out
    assert "FAIL  logits mean_rel" in out and "RESULT: FAIL" in out


def test_baseline_factor_relaxes_a_check_relative_to_the_stock_baselines():
    tol = evaluate.TOLERANCES["bfloat16"]

    def result(mean_rel, unexplained):
        return {"logits": {"all": {"max_rel": 0.0, "mean_rel": mean_rel}}, "ppl_rel": 0.0,
                "greedy": {"unexplained_divergences": unexplained}}

    results = {"flash_mla": result(0.1, 2), "sdpa": result(0.08, 1)}
    rows = {r["name"]: r for r in evaluate.checks(results, "flash_mla", ["sdpa"], tol, baseline_factor=2.0)}
    assert rows["logits mean_rel"]["ok"] and rows["logits mean_rel"]["baseline_limit"] == pytest.approx(0.16)
    assert rows["greedy divergences not near-ties"]["ok"]
    rows = {r["name"]: r for r in evaluate.checks(results, "flash_mla", ["sdpa"], tol, baseline_factor=0)}
    assert not rows["logits mean_rel"]["ok"] and not rows["greedy divergences not near-ties"]["ok"]
    rows = {r["name"]: r for r in evaluate.checks(results, "flash_mla", [], tol, baseline_factor=2.0)}
    assert not rows["logits mean_rel"]["ok"]
    failed = evaluate.checks({"flash_mla": {"error": "RuntimeError: boom"}}, "flash_mla", [], tol, 2.0)
    assert failed == [{"name": "runs", "value": "RuntimeError: boom", "limit": "no exception", "ok": False}]


@pytest.mark.parametrize("extra, message", [
    (["--text", "missing.txt"], "--text: no such file"),
    (["--candidate", "no_such_attention"], "not registered"),
    (["--tokens", "__write_bad_ids__"], "outside [0, 256)"),
    (["--seq-len", "4096"], "fewer than one window"),
])
def test_usage_errors_exit_2(checkpoint, tmp_path, capsys, extra, message):
    if "__write_bad_ids__" in extra:
        bad = tmp_path / "ids.txt"
        bad.write_text("1 2 3 999999\n" * 8)
        extra = ["--tokens", str(bad)]
    assert evaluate.main([checkpoint] + SMALL + extra) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("name, content", [
    ("bad.pt", b"\x13\x37garbage bytes, not a torch.save file" * 4),  # UnpicklingError
    ("empty.pt", b""),  # EOFError
    ("text.pt", b"hello world"),  # KeyError inside torch.load
    ("truncated.pt", "__truncated__"),  # RuntimeError of the zip reader
    ("bad.json", b"[1, 2,"),
    ("latin1.txt", "caf\u00e9 1 2".encode("latin-1")),
])
def test_unreadable_token_file_is_a_usage_error_naming_tokens(checkpoint, tmp_path, capsys, name, content):
    path = tmp_path / name
    if content == "__truncated__":
        torch.save(torch.arange(64), path)
        content = path.read_bytes()[:100]
    path.write_bytes(content)
    assert evaluate.main([checkpoint, "--tokens", str(path)] + SMALL) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("evaluate: error:")]
    assert len(errors) == 1 and errors[0].count(f"--tokens: cannot read {path}: ") == 1  # one line, the flag
    assert "Traceback" not in err


def test_non_utf8_text_is_a_usage_error_naming_text(checkpoint, tmp_path, capsys, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"caf\xe9 au lait\n")

    def tokenizer(text, add_special_tokens):
        return {"input_ids": [1] * len(text)}

    monkeypatch.setattr(token_data, "load_tokenizer", lambda checkpoint: tokenizer)
    assert evaluate.main([checkpoint, "--text", str(path)] + SMALL) == 2
    assert f"--text: cannot read {path}: expected UTF-8 text" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["float16", "fp16"])
def test_fp8_cache_with_an_unserved_dtype_is_a_usage_error_before_loading(checkpoint, monkeypatch, capsys, dtype):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --kv-cache-dtype was checked")

    monkeypatch.setattr(evaluate, "load_model", no_load)
    argv = [checkpoint, "--kv-cache-dtype", "fp8_e4m3"] + SMALL + ["--dtype", dtype]
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err
    assert "--kv-cache-dtype fp8_e4m3: an FP8 cache serves bfloat16 or float32 models" in err
    assert "got --dtype float16" in err


def test_text_without_tokenizer_and_missing_checkpoint_exit_2(checkpoint, tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("hello world\n")
    assert evaluate.main([checkpoint, "--text", str(text)] + SMALL) == 2
    assert "no tokenizer" in capsys.readouterr().err
    assert evaluate.main([str(tmp_path / "nowhere")] + SMALL) == 2
    assert "config.json" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--seq-len", "0"], "--seq-len: must be >= 1"),
    (["--prefill-len", "99", "--seq-len", "8"], "--prefill-len: must be in [1, --seq-len=8]"),
    (["--candidate", "eager"], "must all differ"),
    (["--layers", "0"], "--layers: must be >= 1"),
    (["--baseline-factor", "-1"], "--baseline-factor: must be >= 0"),
    (["some_checkpoint", "--layers", "2"], "--layers: applies only with --preset"),
    (["--layers", "2"], "--layers: applies only with --preset"),
    (["--json", "/nonexistent/dir/x.json"], "--json: expected a file in an existing folder"),
])
def test_argument_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        evaluate.parse_args(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_json_path_is_checked_before_anything_is_loaded(tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        evaluate.parse_args(["--json", str(tmp_path)])
    assert excinfo.value.code == 2
    assert "--json: expected a file path, got the folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as excinfo:
        evaluate.main(["--json", str(tmp_path / "missing" / "x.json")] + SMALL)
    assert excinfo.value.code == 2
    assert "--json: expected a file in an existing folder" in capsys.readouterr().err
    assert evaluate.parse_args(["--json", str(tmp_path / "x.json"), "--preset", "tiny", "--layers", "1"]).layers == 1


def test_unknown_attention_is_a_setup_error_naming_the_flag(checkpoint, capsys):
    assert evaluate.main([checkpoint, "--candidate", "no_such_attention", "--baselines", ""] + SMALL) == 2
    assert "--candidate no_such_attention: unavailable" in capsys.readouterr().err


def test_token_files(tmp_path):
    (tmp_path / "a.txt").write_text("1 2, 3\n4 5\n")
    (tmp_path / "b.json").write_text(json.dumps([[1, 2, 3], [4, 5]]))
    torch.save(torch.tensor([[1, 2, 3, 4, 5]]), tmp_path / "c.pt")
    for name in ("a.txt", "b.json", "c.pt"):
        assert token_data.read_token_file(str(tmp_path / name)) == [1, 2, 3, 4, 5]
    torch.save(torch.rand(3), tmp_path / "d.pt")
    with pytest.raises(token_data.DataError, match="integer token ids"):
        token_data.read_token_file(str(tmp_path / "d.pt"))
    w = token_data.windows(list(range(10)), seq_len=4, max_windows=8, vocab_size=16)
    assert w.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_greedy_divergence_is_a_near_tie_only_when_the_reference_logits_say_so():
    ref = torch.tensor([[5, 6, 7]])
    cand = torch.tensor([[5, 6, 8]])
    logits = torch.zeros(1, 3, 10)
    logits[0, 2, 7], logits[0, 2, 8] = 10.0, 9.99  # gap 0.01 of a largest logit of 10
    tie = greedy_agreement(ref, logits, cand, tie_rel=2e-3)
    assert tie["unexplained_divergences"] == 0 and tie["match_rate"] == pytest.approx(2 / 3)
    assert tie["divergences"][0]["step"] == 2 and tie["prefix_match"] == pytest.approx(2 / 3)
    strict = greedy_agreement(ref, logits, cand, tie_rel=1e-4)
    assert strict["unexplained_divergences"] == 1


def test_reference_failure_is_a_setup_error(checkpoint, monkeypatch, capsys):
    from hf_flashmla.cli import metrics

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

    monkeypatch.setattr(evaluate, "teacher_forced_logits", out_of_memory)
    assert metrics.teacher_forced_logits is not out_of_memory
    assert evaluate.main([checkpoint, "--candidate", "sdpa", "--baselines", ""] + SMALL) == 2
    err = capsys.readouterr().err
    assert "the reference eager failed: OutOfMemoryError" in err and "smaller --seq-len" in err


def test_bad_device_is_a_setup_error(checkpoint, capsys):
    assert evaluate.main([checkpoint] + SMALL + ["--device", "bogus"]) == 2
    assert "evaluate: error: --device: 'bogus' is not a device" in capsys.readouterr().err


def test_random_preset_instead_of_a_checkpoint(tmp_path):
    path = tmp_path / "eval.json"
    assert evaluate.main(["--preset", "tiny", "--candidate", "sdpa", "--baselines", "", "--json", str(path)]
                         + SMALL) == 0
    report = json.loads(path.read_text())
    assert report["checkpoint"] == "random tiny model (seed 0)" and report["result"] == "PASS"


def test_evaluate_is_a_subcommand_of_the_console_script(checkpoint, capsys):
    from hf_flashmla.__main__ import main

    assert main(["evaluate", checkpoint, "--candidate", "sdpa", "--baselines", ""] + SMALL) == 0
    assert "RESULT: PASS" in capsys.readouterr().out


def test_fp8_cache_measured_against_eager(checkpoint, tmp_path, capsys):
    """--kv-cache-dtype fp8_e4m3: flash_mla with the FP8 cache against eager (exact keys), under the FP8 tolerances."""
    if rt.attn_unavailable_reason("flash_mla"):
        pytest.skip(rt.attn_unavailable_reason("flash_mla"))
    path = tmp_path / "eval.json"
    assert evaluate.main([checkpoint, "--kv-cache-dtype", "fp8_e4m3", "--baselines", "", "--json", str(path)]
                         + SMALL) == 0
    report = json.loads(path.read_text())
    assert report["kv_cache_dtype"] == "fp8_e4m3" and report["tolerances"] == evaluate.FP8_TOLERANCES
    logits = report["results"]["flash_mla"]["logits"]["all"]
    assert 0 < logits["mean_rel"] < evaluate.FP8_TOLERANCES["mean_rel"]  # quantized: not bit-equal to eager
    out = capsys.readouterr().out
    assert "flash_mla latent cache fp8_e4m3" in out and "FP8 cache tolerances" in out
