#!/usr/bin/env bash
# Run 110 (H100): the final code (run 109's B'): build, smoke, every GPU test, memcheck and racecheck on every
# sanitize case.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cp $O/110_* "$OUT/" 2>/dev/null; }
trap finish EXIT
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep error $O/build.log | head; exit 1; }
grep -E "spill|Used" $O/build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
el tests; timeout 240 python3 -m pytest -q -m gpu tests/ > $O/110_gpu_tests.log 2>&1; tail -3 $O/110_gpu_tests.log
el memcheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 90 compute-sanitizer --tool memcheck python3 scripts/sanitize_case.py > $O/110_memcheck.log 2>&1; echo rc $?; grep -E "^case |ERROR SUMMARY|cases right" $O/110_memcheck.log
el racecheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 150 compute-sanitizer --tool racecheck --print-limit 40 python3 scripts/sanitize_case.py > $O/110_racecheck.log 2>&1; echo rc $?; grep -E "^case |RACECHECK SUMMARY|cases right" $O/110_racecheck.log
