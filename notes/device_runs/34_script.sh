#!/usr/bin/env bash
# Run 34: A/B of (D) run 33's kernel (ab_base/csrc) against (E) the combine kernel with a second shape: for few rows
# (batch * s_q * h_q <= 4096) one block per row whose 4 warps split the splits (run 33: the uneven b4 case, one
# sequence split ~100 ways, went 61 -> 72 us with a warp per row). Main + extra tables interleaved E D E D, then
# every GPU test, memcheck and racecheck on E.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run34.tgz" o); }
trap finish EXIT
build() { rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; md5sum /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build D; mv csrc /tmp/csrc_e; cp -r ab_base/csrc csrc; build D; rm -rf csrc; mv /tmp/csrc_e csrc
el build E; build E
el smoke E; timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || exit 1
for run in E_1 D_1 E_2 D_2; do
  v=${run:0:1}
  el bench $run; use $v; timeout 100 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_$run.json > $O/bench_$run.log 2>&1; grep -E "geomean|incorrect" $O/bench_$run.log; grep -E "^== (uneven|b128_1K|b16_sq16)" -A3 $O/bench_$run.log | grep "ours " | cut -c1-40
done
use E
el tests E; timeout 170 python3 -m pytest -q -m "gpu or triton_gpu" tests/ > $O/gpu_tests.log 2>&1; tail -1 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
el memcheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 60 compute-sanitizer --tool memcheck --print-limit 20 python3 scripts/sanitize_case.py > $O/sanitize_memcheck.log 2>&1; echo rc $?; grep -E "ERROR SUMMARY|cases right" $O/sanitize_memcheck.log
el racecheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 90 compute-sanitizer --tool racecheck --print-limit 20 python3 scripts/sanitize_case.py > $O/sanitize_racecheck.log 2>&1; echo rc $?; grep -E "RACECHECK SUMMARY|cases right" $O/sanitize_racecheck.log; grep -oE "mla_decode_[a-z_]+.(cuh|cu):[0-9]+" $O/sanitize_racecheck.log | sort | uniq -c
