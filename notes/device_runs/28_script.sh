#!/usr/bin/env bash
# Run 28: A/B of (A) run 24's kernel (HEAD before this change, in ab_base/csrc) against (B) 16-byte epilogue stores
# (quad transpose), the combine kernel over 32-row blocks with a warp per row, split slot read at item start.
# Per-kernel GPU time (breakdown), the main table interleaved B A B A, the debug timeline of B.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run28.tgz" o); }
trap finish EXIT
build() { HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build A; mv csrc /tmp/csrc_b; cp -r ab_base/csrc csrc; build A; rm -rf csrc; mv /tmp/csrc_b csrc
el build B; build B
grep -E "spill|Used" $O/build_B.log | sort | uniq -c | head
el smoke B; timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || exit 1
C=b64_L4096_sq1_h16,b64_L4096_sq2_h128,b64_L4096_sq1_h128,b128_L8192_sq2_h128,b128_L4096_sq1_h128,b128_L16384_sq1_h16,b1024_L1024_sq2_h128
for v in A B; do el breakdown $v; use $v; timeout 60 python3 scripts/kernel_breakdown.py --configs $C 2>&1 | grep -v Warn | tee $O/breakdown_$v.log | cut -c1-180; done
for r in 1 2; do for v in B A; do
  el bench $v $r; use $v; timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_${v}_$r.json > $O/bench_${v}_$r.log 2>&1; grep -E "geomean|max GB|max TFLOP|incorrect" $O/bench_${v}_$r.log
done; done
el timeline B; use B; mkdir -p $O/tl; TIMELINE_DIR=$O/tl timeout 150 bash scripts/seesaw_timeline.sh 64,4096,2,128 128,8192,2,128 64,4096,1,16 2>&1 | grep -v "^timeline" | tee $O/timeline.log
