#!/usr/bin/env bash
# Run 56 (H100): stage 0's rope chunk as its own group, freed by WG0 right after S_A and reloaded first
# (HF_FLASHMLA_EARLY_ROPE=1, the new default) vs the two-group stage (=0): build both, smoke E1, main table E1 E0
# interleaved twice, memcheck on E1, every GPU test on E1.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run56.tgz" o); }
trap finish EXIT
build() { rm -rf build; HF_FLASHMLA_NVCC_FLAGS="-DHF_FLASHMLA_EARLY_ROPE=$2" HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build; build E0 0; build E1 1; grep -E "spill|Used 168" $O/build_E1.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -20 $O/smoke.log; exit 1; }
for run in E1_1 E0_1 E1_2 E0_2; do
  el main $run; use ${run:0:2}
  timeout 110 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/main_$run.json > $O/main_$run.log 2>&1; grep -E "geomean|max TFLOP|incorrect|median SM" $O/main_$run.log
done
use E1
el memcheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 150 compute-sanitizer --tool memcheck --print-limit 20 python3 scripts/sanitize_case.py > $O/memcheck.log 2>&1; echo rc $?; grep -E "sanitize_case:|ERROR SUMMARY" $O/memcheck.log
el tests; timeout $(( 590 - ($(date +%s) - t0) )) python3 -m pytest -q -m gpu tests/ > $O/gpu_tests.log 2>&1; tail -1 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
