"""csrc/mla_checks.h (the sm_90 op's structural checks, run in C++ so that the Python hot path need not) raises,
on every bad input of tests/test_validation.py that reaches it, the exception hf_flashmla/validation.py raises:
same type, same message. Built for the CPU with torch's extension builder (a host C++ compiler, ~1 minute the
first time, cached after); skipped where none is found. Also: mla_api.cpp, the CUDA op's binding, compiles."""
import numbers
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from hf_flashmla import _ops, validation
from test_validation import BAD_CALLS, good_call, misaligned

ROOT = Path(__file__).resolve().parent.parent
TENSORS = ("q", "k_cache", "block_table", "cache_seqlens", "tile_scheduler_metadata", "num_splits")


@pytest.fixture(scope="module")
def checks_op():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no host C++ compiler")
    from torch.utils.cpp_extension import load
    load(name="hf_flashmla_checks_cpu", sources=[str(ROOT / "tests" / "harness" / "mla_checks_cpu.cpp")],
         extra_include_paths=[str(ROOT / "csrc")], is_python_module=False, verbose=False)
    return torch.ops.hf_flashmla_checks.check_inputs


def outcome(function):
    try:
        function()
    except (TypeError, ValueError) as error:
        return type(error), str(error)
    return None


def reaches_the_op(call):
    """The schema's types: tensors, a float scale (None is Python's default), an int head_dim_v, a bool causal."""
    return (all(isinstance(call[name], torch.Tensor) for name in TENSORS) and isinstance(call["causal"], bool)
            and (call["softmax_scale"] is None or (isinstance(call["softmax_scale"], numbers.Real)
                                                   and not isinstance(call["softmax_scale"], bool)))
            and isinstance(call["head_dim_v"], int) and not isinstance(call["head_dim_v"], bool))


def python_checks(call):
    validation.check_inputs(call["q"], call["k_cache"], call["block_table"], call["cache_seqlens"],
                            call["head_dim_v"], call["softmax_scale"], call["causal"], for_kernel=True)
    validation.check_schedule_tensors(call["tile_scheduler_metadata"], call["num_splits"], call["q"].shape[0],
                                      call["q"].device)


def cpp_checks(op, call):
    """The header's checks through the dispatcher, their RuntimeError turned into the exception it names, as
    hf_flashmla._ops does for the CUDA op."""
    scale = call["q"].shape[-1] ** -0.5 if call["softmax_scale"] is None else float(call["softmax_scale"])
    try:
        op(*(call[name] for name in TENSORS), scale, call["head_dim_v"])
    except RuntimeError as error:
        raise _ops.check_error(error) from None


CASES = [case for case in BAD_CALLS]


@pytest.mark.parametrize("change", [case[1] for case in CASES], ids=[case[0] for case in CASES])
def test_cpp_checks_raise_what_python_raises(checks_op, change):
    call = good_call()
    call.update(change(call))
    if not reaches_the_op(call):
        pytest.skip("rejected in Python before the op (not a tensor, or a scalar of another type)")
    expected = outcome(lambda: python_checks(call))
    got = outcome(lambda: cpp_checks(checks_op, call))
    assert got == expected


def test_the_good_call_and_grouped_heads(checks_op):
    call = good_call()
    assert outcome(lambda: cpp_checks(checks_op, call)) is None
    call["k_cache"] = call["k_cache"].expand(-1, -1, 2, -1).contiguous()
    got = outcome(lambda: cpp_checks(checks_op, call))
    assert got == outcome(lambda: python_checks(call)) and got[0] is ValueError and got[1].startswith("k_cache:")
    call = good_call()
    call["q"] = call["q"].float()
    call["k_cache"] = call["k_cache"].float()
    assert outcome(lambda: cpp_checks(checks_op, call)) == outcome(lambda: python_checks(call))


def test_schedule_seqlens_checks(checks_op):
    call = good_call()
    lengths = call["cache_seqlens"]
    scale = 0.1
    args = [call[name] for name in TENSORS] + [scale, 512]
    checks_op(*args, lengths.clone())
    with pytest.raises(RuntimeError, match="^TypeError: schedule_seqlens: expected dtype int32"):
        checks_op(*args, lengths.long())
    with pytest.raises(RuntimeError, match=r"^ValueError: schedule_seqlens: expected shape \(3,\)"):
        checks_op(*args, lengths[:2].contiguous())


def test_check_error_names_the_exception_and_keeps_other_errors():
    assert type(_ops.check_error(RuntimeError("ValueError: q: bad"))) is ValueError
    assert str(_ops.check_error(RuntimeError("TypeError: q: bad"))) == "q: bad"
    other = RuntimeError("CUDA error: an illegal memory access was encountered")
    assert _ops.check_error(other) is other


def test_op_binding_compiles():
    """csrc/mla_api.cpp against torch's headers (syntax only: the CPU wheel has no CUDA libraries to link)."""
    compiler = shutil.which("c++") or shutil.which("g++")
    cuda_include = Path("/usr/local/cuda/include")
    if compiler is None or not (cuda_include / "cuda_runtime.h").exists():
        pytest.skip("no host C++ compiler or CUDA headers")
    from torch.utils.cpp_extension import include_paths
    stub = ROOT / "tests" / "harness" / "cuda_cmake_stub"  # the CPU wheel lacks this generated header
    cmd = [compiler, "-std=c++17", "-fsyntax-only", "-w", f"-I{stub}", f"-I{cuda_include}", f"-I{ROOT / 'csrc'}",
           f"-I{sysconfig.get_paths()['include']}"] + [f"-I{path}" for path in include_paths()]
    result = subprocess.run(cmd + [str(ROOT / "csrc" / "mla_api.cpp")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


def wide_batch(call):
    batch = 65536
    return dict(q=torch.zeros(batch, 1, 1, 576, dtype=torch.bfloat16),
                block_table=torch.zeros(batch, 1, dtype=torch.int32),
                cache_seqlens=torch.zeros(batch, dtype=torch.int32),
                num_splits=torch.zeros(batch + 1, dtype=torch.int32))


# The sm_90 kernel's own limits (TMA alignment, grid rows), which the reference path does not have.
KERNEL_LIMIT_CASES = [
    ("q_misaligned", lambda c: dict(q=misaligned(c["q"])), "q"),
    ("k_cache_misaligned", lambda c: dict(k_cache=misaligned(c["k_cache"])), "k_cache"),
    ("batch_65536", wide_batch, "q"),
    ("parts_65536", lambda c: dict(tile_scheduler_metadata=torch.zeros(65536, 8, dtype=torch.int32)),
     "tile_scheduler_metadata"),
]


@pytest.mark.parametrize("change,argument", [case[1:] for case in KERNEL_LIMIT_CASES],
                         ids=[case[0] for case in KERNEL_LIMIT_CASES])
def test_kernel_limits_raise_the_same_in_cpp_and_python(checks_op, change, argument):
    call = good_call()
    call.update(change(call))
    expected = outcome(lambda: python_checks(call))
    assert expected is not None and expected[0] is ValueError and expected[1].startswith(argument + ":"), expected
    assert outcome(lambda: cpp_checks(checks_op, call)) == expected
    if argument != "tile_scheduler_metadata":  # the reference path reads any alignment and batch
        validation.check_inputs(call["q"], call["k_cache"], call["block_table"], call["cache_seqlens"], 512, None,
                                True, for_kernel=False)


def fp8_call():
    from hf_flashmla import fp8_latent
    call = good_call()
    call["k_cache"] = fp8_latent.quantize(call["k_cache"], 512)
    return call


# (name, change, is_fp8_kvcache): FP8 caches on the kernel path, and an FP8 cache passed without the flag.
FP8_CASES = [
    ("good", lambda c: {}, True),
    ("q_fp16", lambda c: dict(q=c["q"].half()), True),
    ("q_float32", lambda c: dict(q=c["q"].float()), True),
    ("k_cache_bf16_with_flag", lambda c: dict(k_cache=good_call()["k_cache"]), True),
    ("k_cache_576_bytes", lambda c: dict(k_cache=c["k_cache"][..., :576].contiguous()), True),
    ("k_cache_float8_view", lambda c: dict(k_cache=c["k_cache"].view(torch.float8_e4m3fn)), True),
    ("k_cache_int8", lambda c: dict(k_cache=c["k_cache"].view(torch.int8)), True),
    ("uint8_cache_without_flag", lambda c: {}, False),
]


@pytest.mark.parametrize("change,is_fp8", [case[1:] for case in FP8_CASES], ids=[case[0] for case in FP8_CASES])
def test_cpp_fp8_checks_raise_what_python_raises(checks_op, change, is_fp8):
    call = fp8_call()
    call.update(change(call))
    scale = call["q"].shape[-1] ** -0.5

    def python():
        validation.check_inputs(call["q"], call["k_cache"], call["block_table"], call["cache_seqlens"], 512, scale,
                                True, for_kernel=True, is_fp8_kvcache=is_fp8)

    def cpp():
        try:
            checks_op(*(call[name] for name in TENSORS), scale, 512, None, is_fp8)
        except RuntimeError as error:
            raise _ops.check_error(error) from None

    expected = outcome(python)
    assert outcome(cpp) == expected
    assert (expected is None) == (FP8_CASES[0][1] is change or change is FP8_CASES[5][1])
