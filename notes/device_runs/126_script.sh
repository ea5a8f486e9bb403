#!/usr/bin/env bash
# Run 126 (H100): the new GPU test of the lazy rescaling's update path (test_running_max_jumps: key scales that grow
# along each sequence or vary at random per page), then the rest of the kernel GPU tests. Carry nothing.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
el "max jumps"; timeout 60 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py -k running_max_jumps 2>&1 | tail -3
el "kernel tests"; timeout 150 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py 2>&1 | tail -2
el done
