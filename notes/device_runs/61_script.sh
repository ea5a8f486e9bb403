#!/usr/bin/env bash
# Run 61 (H100): every GPU test on the final commit, the Triton-marked ones included (pytest -m "gpu or triton_gpu").
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
timeout 300 python3 -m pytest -q -m "gpu or triton_gpu" tests/ > $OUT/gpu_tests_all.log 2>&1; echo rc $?
tail -1 $OUT/gpu_tests_all.log; grep -E "^FAILED|^ERROR" $OUT/gpu_tests_all.log | head
