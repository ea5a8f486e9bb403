#!/usr/bin/env bash
# Run 30: A/B of (A) run 24's kernel (ab_base/csrc) against (C) run 29's B (16-byte bf16 epilogue stores, split
# slot read at item start) with the combine kernel reworked again: one warp per row, 4 warps per block, rows per
# warp chosen so that the grid stays near 4096 blocks, split weights one per lane. Breakdown, main table
# interleaved C A A C, then every GPU test (kernel, schedule, Triton, integration) on C.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run30.tgz" o); }
trap finish EXIT
build() { rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; md5sum /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build A; mv csrc /tmp/csrc_c; cp -r ab_base/csrc csrc; build A; rm -rf csrc; mv /tmp/csrc_c csrc
el build C; build C
grep -E "spill|Used" $O/build_C.log | sort | uniq -c | head
el smoke C; timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || exit 1
C=b64_L4096_sq1_h16,b64_L4096_sq1_h32,b64_L4096_sq2_h128,b64_L4096_sq1_h128,b128_L8192_sq2_h128,b128_L4096_sq1_h128,b128_L16384_sq1_h16,b1024_L1024_sq2_h128,b16_L65536_sq2_h128
for v in A C; do el breakdown $v; use $v; timeout 60 python3 scripts/kernel_breakdown.py --configs $C 2>&1 | grep -v -i warn | tee $O/breakdown_$v.log | cut -c1-180; done
for run in C_1 A_1 A_2 C_2; do
  v=${run:0:1}
  el bench $run; use $v; timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_$run.json > $O/bench_$run.log 2>&1; grep -E "geomean|incorrect" $O/bench_$run.log
done
el tests C; use C; timeout 230 python3 -m pytest -q -m "gpu or triton_gpu" tests/ > $O/gpu_tests.log 2>&1; tail -2 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
