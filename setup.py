"""Builds the CUDA extension hf_flashmla._C and lists the dependencies; everything else about the package is in
pyproject.toml.

The extension is built only where it can run: torch with CUDA and nvcc present. HF_FLASHMLA_BUILD_EXT=1 forces the
build (failing loudly if it cannot), =0 skips it, so a CPU machine installs the pure-Python package (reference and
Triton paths) in seconds. On the GPU machine: HF_FLASHMLA_BUILD_EXT=1 python setup.py build_ext --inplace."""
import importlib.util
import os
import runpy

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# The supported transformers range is declared once, in a module that imports nothing (the package needs torch).
TRANSFORMERS_REQUIREMENT = runpy.run_path(os.path.join(ROOT, "hf_flashmla", "transformers_range.py"))["REQUIREMENT"]


def load_envs():
    """hf_flashmla/envs.py, the registry of the HF_FLASHMLA_* settings, without importing the package (which
    needs torch and transformers, not installed yet at this point)."""
    spec = importlib.util.spec_from_file_location("hf_flashmla_envs", os.path.join(ROOT, "hf_flashmla", "envs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def want_extension() -> bool:
    forced = load_envs().BUILD_EXT.value()
    if forced:
        return forced == "1"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension_setup_args() -> dict:
    if not want_extension():
        return {}
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension

    cccl = os.path.join(CUDA_HOME, "include", "cccl")
    nvcc_flags = [
        "-O3", "-std=c++17", "--use_fast_math", "-lineinfo",
        # wgmma and setmaxnreg exist only on the arch-specific sm_90a target.
        "-gencode=arch=compute_90a,code=sm_90a",
        "--expt-relaxed-constexpr", "-Xptxas=-v",
    ]
    ext = CUDAExtension(
        name="hf_flashmla._C",
        sources=["csrc/mla_api.cpp", "csrc/mla_decode_kernel.cu", "csrc/mla_metadata_kernel.cu",
                 "csrc/fp8_latent_write.cu"],
        include_dirs=[os.path.join(ROOT, "csrc"), cccl],
        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": nvcc_flags},
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


# The dependencies are dynamic in pyproject.toml so that the transformers range comes from transformers_range.py.
setup(install_requires=["torch>=2.4", TRANSFORMERS_REQUIREMENT, "accelerate", "safetensors"], **extension_setup_args())
