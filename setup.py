"""Installs hf_flashmla. The CUDA extension (csrc/) is built only where it can run: torch with CUDA and
nvcc present. HF_FLASHMLA_BUILD_EXT=1 forces the build (fails loudly if it cannot), =0 skips it, so a
CPU machine installs the pure-Python package (reference path) in seconds."""
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_extension() -> bool:
    forced = os.environ.get("HF_FLASHMLA_BUILD_EXT")
    if forced is not None:
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
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension, CUDA_HOME

    cccl = os.path.join(CUDA_HOME, "include", "cccl")
    nvcc_flags = [
        "-O3", "-std=c++17", "--use_fast_math", "-lineinfo",
        # wgmma and setmaxnreg exist only on the arch-specific sm_90a target.
        "-gencode=arch=compute_90a,code=sm_90a",
        "--expt-relaxed-constexpr", "-Xptxas=-v",
    ]
    # Debug builds, e.g. HF_FLASHMLA_NVCC_FLAGS=-DHF_FLASHMLA_TIMELINE (scripts/seesaw_timeline.sh). On the command
    # line rather than through NVCC_APPEND_FLAGS so that ninja sees the change and recompiles.
    nvcc_flags += os.environ.get("HF_FLASHMLA_NVCC_FLAGS", "").split()
    ext = CUDAExtension(
        name="hf_flashmla._C",
        sources=["csrc/mla_api.cpp", "csrc/mla_decode_kernel.cu", "csrc/mla_metadata_kernel.cu"],
        include_dirs=[os.path.join(ROOT, "csrc"), cccl],
        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": nvcc_flags},
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(
    name="hf_flashmla",
    version="0.1.0",
    description="FlashMLA-class multi-head latent attention decoding for Hopper, for Hugging Face Transformers",
    packages=find_packages(include=["hf_flashmla", "hf_flashmla.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "transformers>=5.15", "accelerate", "safetensors"],
    # triton: the portable decode path; in the test extra so that CI runs its kernels in the interpreter
    extras_require={"test": ["pytest", "triton>=3.6"]},
    entry_points={"console_scripts": ["hf-flashmla=hf_flashmla.__main__:main"]},
    **extension_setup_args(),
)
