"""tools/sass_diff.py on hand-written cuobjdump text (CPU, no nvcc): kernels parsed by name, instructions compared
with and without their register numbers."""
import shutil

import pytest

from tools import sass_diff

SASS = """
	code for sm_90a
		Function : {name}
	.headerflags	@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                                  /* 0x00000a00ff017b82 */
        /*0010*/              @!P0 IMAD.MOV.U32 R{reg}, RZ, RZ, UR{ureg} ;                 /* 0x000fe200078e00ff */
        /*0020*/                   {last} ;                                                /* 0x000fea0003800000 */
"""
ANONYMOUS = ("_ZN11hf_flashmla55_GLOBAL__N__{h}_22_mla_metadata_kernel_cu_{h2}"
             "19mla_metadata_kernelENS_17MlaMetadataParamsE")


def one_kernel(reg=4, ureg=5, last="EXIT", name="_Z6kernelv"):
    parsed = sass_diff.kernels(SASS.format(name=name, reg=reg, ureg=ureg, last=last))
    assert len(parsed) == 1
    return next(iter(parsed.items()))


def test_instructions_are_parsed_without_addresses_or_encodings():
    _, instructions = one_kernel()
    assert instructions == ["LDC R1, c[0x0][0x28]", "@!P0 IMAD.MOV.U32 R4, RZ, RZ, UR5", "EXIT"]


def test_same_instructions_other_registers_and_real_differences():
    _, base = one_kernel()
    assert sass_diff.compare(base, one_kernel()[1]) == "identical"
    assert sass_diff.compare(base, one_kernel(reg=7, ureg=9)[1]) == "registers only"
    assert sass_diff.compare(base, one_kernel(last="BRA 0x20")[1]).startswith("DIFFERENT")
    assert sass_diff.compare(base, base[:2]).startswith("DIFFERENT (3 -> 2")


@pytest.mark.parametrize("cxxfilt", [True, False], ids=["demangled", "mangled"])
def test_a_kernel_in_an_anonymous_namespace_keeps_its_name_across_files(cxxfilt, monkeypatch):
    if not cxxfilt:
        real_which = shutil.which
        monkeypatch.setattr(shutil, "which", lambda name: None if name == "c++filt" else real_which(name))
    elif shutil.which("c++filt") is None:
        pytest.skip("no c++filt")
    first, _ = one_kernel(name=ANONYMOUS.format(h="106f9da0", h2="32cc13c7"))
    second, _ = one_kernel(name=ANONYMOUS.format(h="e7a22c8e", h2="0a1b2c3d"))
    assert first == second and "mla_metadata_kernel" in first


def test_flags_are_the_extensions():
    """sass_diff compiles with the flags setup.py builds the extension with (less the ptxas report)."""
    setup = (sass_diff.ROOT / "setup.py").read_text()
    for flag in sass_diff.FLAGS:
        assert f'"{flag}"' in setup, flag
