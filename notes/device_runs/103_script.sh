#!/usr/bin/env bash
# Run 103 (H100): run 102's shared-row preload with the combine held at 64 registers (two blocks per SM), preloading
# up to two splits per warp (B, <= 32 splits, 40 B of spill) or one (C, <= 16 splits, 24 B), vs (A) HEAD (A from
# `103_shared_row_preload.patch` reversed; C built with -DHF_FLASHMLA_PRELOAD_SPLITS_PER_WARP=1); small_work_probe
# A/B/C twice; every GPU test on B. Carry [".whl"].
set -u -o pipefail; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build /tmp/A /tmp/C; cp -r . /tmp/A; cp -r . /tmp/C
(cd /tmp/A && git apply -R notes/device_runs/103_shared_row_preload.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build_a.log 2>&1) &
(cd /tmp/C && HF_FLASHMLA_NVCC_FLAGS=-DHF_FLASHMLA_PRELOAD_SPLITS_PER_WARP=1 HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build_c.log 2>&1) &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/b.log 2>&1 || { tail -20 /tmp/b.log; echo BUILD FAILED; exit 1; }
wait; grep -q "error" /tmp/build_a.log /tmp/build_c.log && echo "BUILD A/C FAILED"
C=b1_L1024_sq1_h16,b1_L4096_sq1_h16,b1_L16384_sq1_h16,b2_L2048_sq1_h16,b1_L1024_sq1_h128,b1_L4096_sq1_h128,b1_L16384_sq1_h128,b4_L2048_sq1_h64,b8_L4096_sq1_h128,b1_L4096_sq2_h128,uneven_b4_sq4_h16
for r in 1 2; do
  el "A round $r"; (cd /tmp/A && timeout 100 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100)
  el "B round $r"; timeout 100 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100
  el "C round $r"; (cd /tmp/C && timeout 100 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100)
done 2>&1 | tee $OUT/103_output.log
el tests; timeout 200 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -2
el done
