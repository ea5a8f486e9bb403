"""hf_flashmla/envs.py is the one registry of the package's HF_FLASHMLA_* settings: every name the package,
its CUDA sources or setup.py mention is registered there, there are at most six, and each is read when used."""
import re
from pathlib import Path

import pytest

from hf_flashmla import envs

ROOT = Path(__file__).resolve().parent.parent
NOT_SETTINGS = {"HF_FLASHMLA_HOST_DEVICE"}  # a C++ macro of csrc/mla_metadata_core.h


def mentioned_names():
    files = list((ROOT / "hf_flashmla").rglob("*.py")) + list((ROOT / "csrc").iterdir()) + [ROOT / "setup.py"]
    names = set()
    for path in files:
        names |= set(re.findall(r"HF_FLASHMLA_[A-Z0-9_]+", path.read_text()))
    return names - NOT_SETTINGS


def test_every_setting_is_registered_and_there_are_at_most_six():
    registered = {setting.name for setting in envs.SETTINGS}
    assert len(registered) <= 6
    assert mentioned_names() <= registered
    for setting in envs.SETTINGS:  # the module docstring's table names each
        assert setting.name in envs.__doc__


def test_no_environment_reads_in_compiled_code():
    for path in (ROOT / "csrc").iterdir():
        assert "getenv" not in path.read_text(), path


def test_settings_are_read_when_used(monkeypatch):
    monkeypatch.delenv(envs.BACKEND.name, raising=False)
    assert envs.BACKEND.raw() is None and envs.BACKEND.value() == "auto"
    monkeypatch.setenv(envs.BACKEND.name, " Triton ")
    assert envs.BACKEND.raw() == " Triton " and envs.BACKEND.value() == "triton"
    monkeypatch.setenv(envs.BACKEND.name, "")
    assert envs.BACKEND.value() == "auto"
    monkeypatch.setenv(envs.BACKEND.name, "fast")
    with pytest.raises(ValueError, match=f"^{envs.BACKEND.name}: "):
        envs.BACKEND.value()
    monkeypatch.setenv(envs.CHECK_VALUES.name, "on")
    assert envs.check_values_requested(envs.CHECK_VALUES.raw())
    monkeypatch.setenv(envs.CHECK_VALUES.name, "0")
    assert not envs.check_values_requested(envs.CHECK_VALUES.raw())


def test_setup_reads_build_ext_through_the_registry(monkeypatch):
    source = (ROOT / "setup.py").read_text()
    assert "BUILD_EXT.value()" in source and 'os.environ.get("HF_FLASHMLA' not in source
