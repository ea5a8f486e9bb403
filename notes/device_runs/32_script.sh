#!/usr/bin/env bash
# Run 32: A/B of (C) run 30/31's kernel (ab_base/csrc) against (D): both stages load V's right half {4..7} first
# (its warpgroup frees it first), each group as one 4-chunk TMA box (3-D view of the cache) plus the rope chunk,
# instead of nine single-chunk boxes. Smoke, breakdown, main table interleaved D C C D, timeline of D, GPU tests on D.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run32.tgz" o); }
trap finish EXIT
build() { rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; md5sum /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build C; mv csrc /tmp/csrc_d; cp -r ab_base/csrc csrc; build C; rm -rf csrc; mv /tmp/csrc_d csrc
el build D; build D
grep -E "spill|Used" $O/build_D.log | sort | uniq -c | head
el smoke D; timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness|rror" $O/smoke.log | head
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -20 $O/smoke.log; exit 1; }
C=b64_L4096_sq1_h16,b64_L4096_sq2_h128,b128_L8192_sq2_h128,b128_L4096_sq1_h128,b128_L16384_sq1_h16,b128_L16384_sq2_h128
for v in C D; do el breakdown $v; use $v; timeout 60 python3 scripts/kernel_breakdown.py --configs $C 2>&1 | grep -v -i warn | tee $O/breakdown_$v.log | cut -c1-150; done
for run in D_1 C_1 C_2 D_2; do
  v=${run:0:1}
  el bench $run; use $v; timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_$run.json > $O/bench_$run.log 2>&1; grep -E "geomean|max TFLOP|incorrect" $O/bench_$run.log
done
el timeline D; use D; mkdir -p $O/tl; TIMELINE_DIR=$O/tl timeout 100 bash scripts/seesaw_timeline.sh 128,8192,2,128 2>&1 | tee $O/timeline.log | grep -E "^(==|  wg)"
el tests D; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /dev/null 2>&1; md5sum hf_flashmla/_C*.so
timeout 200 python3 -m pytest -q -m gpu tests/ > $O/gpu_tests.log 2>&1; tail -2 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
