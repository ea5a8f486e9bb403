"""Registers the `gpu` marker. Tests marked gpu run only where the sm90 CUDA kernel is usable (a CUDA
device of compute capability 9.0 and the built extension: hf_flashmla.backend(cuda).name == 'cuda_sm90');
everywhere else they are skipped with the reason."""
import functools

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an sm90 CUDA device and the built hf_flashmla._C extension")


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


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    reason = _kernel_unavailable_reason()
    if reason:
        skip = pytest.mark.skip(reason=reason)
        for item in gpu_items:
            item.add_marker(skip)
