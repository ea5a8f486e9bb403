#!/usr/bin/env bash
# Run 114 (H100): where run 113's B (partials in the output's dtype) lost 1-2 us on b = 1, h_q = 16 (small_work_probe:
# b1 L16K h16 24.9 -> 27.0 us, b1 L1K 12.4 -> 13.3) while gaining 3-10% on split-heavy configs: GPU time per kernel
# with the combine in plain stream order (HF_FLASHMLA_PDL=0) for A (fp32 partials, HEAD), B (working tree) and
# C (= B + 114_C_plain_partial_stores.patch: partial rows stored 4 bytes per lane, invalid rows skipped, as A's fp32
# path did), then small_work_probe A/B/C twice.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build /tmp/A /tmp/C; cp -r . /tmp/A; cp -r . /tmp/C
(cd /tmp/A && git apply -R notes/device_runs/113_partials_in_output_dtype.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build_A.log 2>&1 || echo "BUILD A FAILED") &
(cd /tmp/C && git apply notes/device_runs/114_C_plain_partial_stores.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build_C.log 2>&1 || echo "BUILD C FAILED") &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build_B.log 2>&1 || { echo BUILD B FAILED; exit 1; }
wait
(cd /tmp/C && timeout 60 python3 scripts/kernel_smoke.py --check-only 2>&1 | grep -E "FAIL|correctness")
K=b1_L1024_sq1_h16,b1_L16384_sq1_h16,b64_L4096_sq1_h64,b64_L4096_sq1_h16
for v in A B C; do
  el "breakdown $v"; d=.; [ $v = A ] && d=/tmp/A; [ $v = C ] && d=/tmp/C
  (cd $d && HF_FLASHMLA_PDL=0 timeout 60 python3 scripts/kernel_breakdown.py --configs $K 2>&1 | grep -v -i warn | cut -c1-200)
done 2>&1 | tee $OUT/114_breakdown.log
S=b1_L1024_sq1_h16,b1_L16384_sq1_h16,b1_L4096_sq1_h128,uneven_b4_sq4_h16
for r in 1 2; do for v in A B C; do
  el "small $v $r"; d=.; [ $v = A ] && d=/tmp/A; [ $v = C ] && d=/tmp/C
  (cd $d && timeout 60 python3 scripts/small_work_probe.py --sms 132 --configs $S 2>&1 | grep -v -i warn | cut -c1-100)
done; done 2>&1 | tee $OUT/114_small.log
el done
