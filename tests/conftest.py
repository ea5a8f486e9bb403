"""The `gpu` and `triton_gpu` markers (registered in pyproject.toml). Tests marked gpu run only where the sm90
CUDA kernel is usable (a CUDA device of compute capability 9.0 and the built extension:
hf_flashmla.backend(cuda).name == 'cuda_sm90');
everywhere else they are skipped with the reason. Likewise `triton_gpu`: a CUDA device where the Triton
kernel can run (compute capability >= 8.0, Triton importable), whatever the automatic choice.

On a machine without CUDA, TRITON_INTERPRET=1 is set here, before anything imports Triton: triton.jit
picks its CPU interpreter from that variable (Triton's own @jit helpers such as tl.max at Triton's first
import), so tests/test_triton_decode.py can run the Triton kernel on the CPU."""
import functools
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def one_cpu_thread():
    """For tests of tiny models on the CPU: their matrices are too small for threads to pay, and on a busy
    CI machine threads cost 3x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def _kernel_unavailable_reason():
    try:
        import torch
        if not torch.cuda.is_available():
            return "no CUDA device"
        import hf_flashmla
        choice = hf_flashmla.backend(torch.device("cuda"))
        if choice.name != "cuda_sm90":
            return f"sm90 kernel not usable: {choice.reason}"
    except Exception as error:  # an import or backend error skips the gpu tests with the reason
        return f"sm90 kernel not usable: {error!r}"
    return None


@functools.lru_cache(maxsize=None)
def _triton_gpu_unavailable_reason():
    try:
        import torch
        if not torch.cuda.is_available():
            return "no CUDA device"
        from hf_flashmla import dispatch
        if torch.cuda.get_device_capability() < dispatch.TRITON_MIN_CAPABILITY:
            return f"compute capability {torch.cuda.get_device_capability()} < {dispatch.TRITON_MIN_CAPABILITY}"
        error = dispatch.triton_import_error()
        if error:
            return f"Triton not importable: {error}"
    except Exception as error:  # an import error skips the tests with the reason
        return f"Triton kernel not usable: {error!r}"
    return None


def pytest_collection_modifyitems(config, items):
    for marker, unavailable in (("gpu", _kernel_unavailable_reason), ("triton_gpu", _triton_gpu_unavailable_reason)):
        marked = [item for item in items if item.get_closest_marker(marker)]
        reason = unavailable() if marked else None
        if reason:
            skip = pytest.mark.skip(reason=reason)
            for item in marked:
                item.add_marker(skip)
