#!/usr/bin/env bash
# Run 29: A/B of (A) run 24's kernel (ab_base/csrc) against (B) 16-byte bf16 epilogue stores (quad transpose),
# fp32 partials as before, the combine kernel over 32-row blocks with a warp per row, split slot read at item
# start. B also with the schedule's per-sequence overhead at 2 and 1 pages instead of 5
# (HF_FLASHMLA_SEQUENCE_OVERHEAD_PAGES). Order B5 A5 B2 B1 then reversed. Then every kernel GPU test on B.
# (Run 28 tried this A/B but B was never compiled: build/ kept A's objects, newer than B's restored sources.)
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run29.tgz" o); }
trap finish EXIT
build() { rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; md5sum /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build A; mv csrc /tmp/csrc_b; cp -r ab_base/csrc csrc; build A; rm -rf csrc; mv /tmp/csrc_b csrc
el build B; build B
grep -E "spill|Used" $O/build_B.log | sort | uniq -c | head
el smoke B; timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || exit 1
C=b64_L4096_sq1_h16,b64_L4096_sq2_h128,b64_L4096_sq1_h128,b128_L8192_sq2_h128,b128_L4096_sq1_h128,b128_L16384_sq1_h16,b1024_L1024_sq2_h128
for v in A B; do el breakdown $v; use $v; timeout 60 python3 scripts/kernel_breakdown.py --configs $C 2>&1 | grep -v -i warn | tee $O/breakdown_$v.log | cut -c1-180; done
for run in B5_1 A5_1 B2_1 B1_1 B1_2 B2_2 A5_2 B5_2; do
  v=${run:0:1}; ovh=${run:1:1}
  el bench $run; use $v; HF_FLASHMLA_SEQUENCE_OVERHEAD_PAGES=$ovh timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_$run.json > $O/bench_$run.log 2>&1; grep -E "geomean|incorrect" $O/bench_$run.log
done
el tests B; use B; timeout 200 python3 -m pytest -q -m gpu tests/ > $O/gpu_tests.log 2>&1; tail -2 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
