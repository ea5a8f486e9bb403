"""`python -m hf_flashmla` (the `hf-flashmla` console script): bad values stop with a usage error naming the
argument, before any checkpoint is built or loaded; the main job on the CPU; the subcommands it dispatches to."""
import pytest
import torch

from hf_flashmla.__main__ import main
from hf_flashmla.transformers_integration.families import in_this_release


@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "--batch: must be >= 1"),
    (["--prompt-length", "-3"], "--prompt-length: must be >= 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens: must be >= 1"),
    (["--dtype", "nn"], "--dtype: invalid choice"),
    (["--device", "bogus"], "--device: "),
    (["no_such_folder"], "checkpoint: 'no_such_folder' is not a local checkpoint folder"),
    (["--arch", "llama"], "--arch: invalid choice"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no demo checkpoint was built


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device: 'cuda' asked for, but CUDA is not available" in capsys.readouterr().err


def test_main_job_on_the_cpu(capsys, tmp_path, monkeypatch):
    """The whole job on the demo checkpoint (built in the working folder), float32 on the CPU."""
    import json

    monkeypatch.chdir(tmp_path)
    assert main(["--device", "cpu", "--batch", "2", "--prompt-length", "20", "--max-new-tokens", "4",
                 "--no-fp32-reference"]) == 0
    out = capsys.readouterr().out
    config = json.loads((tmp_path / "hf_flashmla_demo_checkpoint" / "config.json").read_text())
    latent_bytes = config["num_hidden_layers"] * (config["kv_lora_rank"] + config["qk_rope_head_dim"]) * 4
    assert "[result] tokens identical: True" in out
    assert f"real tokens x {latent_bytes} bytes" in out


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "evaluate" in out and "check-generate" in out


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "no_such_folder"], "--checkpoint: 'no_such_folder' is not a local checkpoint folder"),
    (["--checkpoint", "__config_file__"], "is not a local checkpoint folder (no config.json in it)"),
    (["--batch", "0"], "--batch: must be >= 1, got 0"),
    (["--batch", "-1"], "--batch: must be >= 1, got -1"),
    (["--prompt-length", "0"], "--prompt-length: must be >= 1, got 0"),
    (["--new-tokens", "0"], "--new-tokens: must be >= 1, got 0"),
    (["--heads", "0"], "--heads: must be >= 1, got 0"),
    (["--layers", "0"], "--layers: must be >= 1, got 0"),
    (["--max-rel-error", "-1"], "--max-rel-error: must be > 0, got -1.0"),
    (["--max-rel-error", "nan"], "--max-rel-error: must be > 0, got nan"),
    (["--device", "bogus"], "--device: 'bogus' is not a device"),
])
def test_check_generate_bad_arguments_are_usage_errors(argv, message, capsys, tmp_path, monkeypatch):
    """Each stops with exit 2 and a message naming the flag, before any model is built."""
    from hf_flashmla.cli import check_generate

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the arguments were checked")

    monkeypatch.setattr(check_generate, "random_model", no_model)
    monkeypatch.setattr(check_generate, "model_class", no_model)
    (tmp_path / "config.json").write_text("{}")
    argv = [str(tmp_path / "config.json") if a == "__config_file__" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(["check-generate", "--device", "cpu"] + argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_check_generate_cuda_device_without_cuda_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["check-generate", "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device: 'cuda' requested but torch.cuda.is_available() is False" in capsys.readouterr().err


def test_check_generate_subcommand_on_the_cpu(capsys):
    assert main(["check-generate", "--device", "cpu", "--layers", "2", "--heads", "4", "--batch", "2",
                 "--prompt-length", "20", "--new-tokens", "4", "--no-fp32-reference"]) == 0
    out = capsys.readouterr().out
    assert "greedy match rate 1.0000 (identical: True)" in out and "RESULT: PASS" in out


@pytest.mark.usefixtures("one_cpu_thread")
@pytest.mark.parametrize("arch", ["glm4_moe_lite", "longcat_flash", "kimi_linear", "kimi_k25", "bailing_hybrid",
                                  "mistral4", "minicpm3", "youtu", "axk1", "deepseek_v2", "sarvam_mla"])
def test_main_job_of_each_family_on_the_cpu(arch, capsys, tmp_path, monkeypatch):
    """--arch builds that family's small checkpoint (./hf_flashmla_demo_checkpoint_ARCH) and runs the job."""
    if not in_this_release(arch):
        pytest.skip(f"{arch} is not in this release")
    monkeypatch.chdir(tmp_path)
    assert main(["--arch", arch, "--device", "cpu", "--batch", "2", "--prompt-length", "20", "--max-new-tokens", "3",
                 "--no-fp32-reference"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / f"hf_flashmla_demo_checkpoint_{arch}" / "config.json").is_file()
    assert "[result] tokens identical: True" in out
    assert "'paged_reference': 0," not in out  # decode steps ran over the pages
