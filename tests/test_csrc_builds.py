"""The CUDA kernels compile for sm_90a with plain nvcc (no GPU, no torch headers needed), without the
ptxas findings that would silently cost speed: register spills and serialised wgmma.

Runs wherever nvcc is found (CUDA_HOME, /usr/local/cuda or PATH), CI included; skipped elsewhere."""
import re
import subprocess
from pathlib import Path

import pytest

from tools.sass_diff import cuda_tool

ROOT = Path(__file__).resolve().parent.parent
# source -> the kernels its ptxas report must name
KERNEL_SOURCES = {
    "csrc/mla_decode_kernel.cu": ("mla_decode_seesaw_kernel", "mla_decode_fp8_narrow_kernel",
                                 "mla_combine_rows_kernel", "mla_combine_shared_row_kernel"),
    "csrc/mla_metadata_kernel.cu": ("mla_metadata_kernel",),
    "csrc/fp8_latent_write.cu": ("fp8_latent_write_kernel",),
}


NVCC = cuda_tool("nvcc")


@pytest.fixture(scope="module")
def ptxas_report(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc not found")
    out_dir = tmp_path_factory.mktemp("csrc_build")
    reports = {}
    for source in KERNEL_SOURCES:
        cmd = [NVCC, "-std=c++17", "-O3", "--use_fast_math", "-gencode=arch=compute_90a,code=sm_90a",
               "-Xptxas=-v", f"-I{ROOT / 'csrc'}", "-c", str(ROOT / source),
               "-o", str(out_dir / (Path(source).stem + ".o"))]
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, f"nvcc failed on {source}:\n{result.stderr[-4000:]}"
        reports[source] = result.stdout + result.stderr
    return reports


def test_kernels_compile_for_sm90a(ptxas_report):
    for source, report in ptxas_report.items():
        for kernel in KERNEL_SOURCES[source]:
            assert kernel in report, f"{source}: no {kernel} in\n{report}"


def test_no_register_spills(ptxas_report):
    for source, report in ptxas_report.items():
        spills = [int(n) for n in re.findall(r"(\d+) bytes spill stores", report)]
        assert spills and max(spills) == 0, f"{source} spills registers:\n{report}"


def test_no_serialised_wgmma(ptxas_report):
    # C7514 / C7520: ptxas inserted waits after every wgmma (accumulators touched in flight, or a
    # warpgroup role the compiler thinks divergent); the kernel then runs far below its speed.
    for source, report in ptxas_report.items():
        assert "C7514" not in report and "C7520" not in report, f"{source}:\n{report}"


def test_generated_wgmma_header_is_current():
    from tools import gen_wgmma_header

    assert gen_wgmma_header.header_text() == (ROOT / "csrc" / "wgmma_ops.cuh").read_text(), \
        "csrc/wgmma_ops.cuh is stale: run python -m tools.gen_wgmma_header"
