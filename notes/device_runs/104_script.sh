#!/usr/bin/env bash
# Run 104 (H100): (B) the shared-row combine in two forms, the preloading one (run 102: 75 registers, one block per
# SM) launched only where its grid is one wave (b * s_q * h_q <= SMs), the 64-register one elsewhere, vs (A) HEAD
# (A from `104_one_wave_preload.patch` reversed in a copy next to B); small_work_probe A/B twice; the new one-wave
# combine tests and every GPU test on B. Carry [".whl"].
set -u -o pipefail; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build /tmp/A; cp -r . /tmp/A
(cd /tmp/A && git apply -R notes/device_runs/104_one_wave_preload.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build_a.log 2>&1) &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/b.log 2>&1 || { tail -20 /tmp/b.log; echo BUILD FAILED; exit 1; }
wait; grep -q "error" /tmp/build_a.log && echo "BUILD A FAILED"
C=b1_L1024_sq1_h16,b1_L4096_sq1_h16,b1_L16384_sq1_h16,b2_L2048_sq1_h16,b1_L1024_sq1_h128,b1_L4096_sq1_h128,b1_L16384_sq1_h128,b4_L2048_sq1_h64,b8_L4096_sq1_h128,b1_L4096_sq2_h128,uneven_b4_sq4_h16
for r in 1 2; do
  el "A round $r"; (cd /tmp/A && timeout 100 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100)
  el "B round $r"; timeout 100 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100
done 2>&1 | tee $OUT/104_output.log
el tests; timeout 220 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -2
el done
