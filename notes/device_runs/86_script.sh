#!/usr/bin/env bash
# Run 86 (H100): (1) small batches: each smaller schedule also padded with empty parts to the full grid (what a
# device-side "fewer parts" rule would launch) vs the smaller grid; (2) the combine kernels' preferred carveout
# (HF_FLASHMLA_COMBINE_CARVEOUT=100 vs the driver default), A/B/A/B at the full grid.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; tail -30 /tmp/build.log; exit 1; }
nvidia-smi --query-gpu=temperature.gpu,clocks.sm,power.draw --format=csv,noheader
C=b1_L1024_sq1_h16,b1_L4096_sq1_h16,b1_L16384_sq1_h16,b1_L4096_sq1_h128,b1_L16384_sq1_h128,b1_L32768_sq1_h128,b2_L8192_sq1_h128,b4_L4096_sq1_h16,b4_L4096_sq1_h64,b8_L4096_sq1_h128,b8_L16384_sq1_h16,uneven_b4_sq4_h16,b128_1K_sq1_h16,b16_sq16_1K_h16
el padded; timeout 200 python3 scripts/small_work_probe.py --sms 132,66,33 --pad --configs $C 2>&1 | grep -v -i warn | cut -c1-150
for round in 1 2; do
  el "carveout default, round $round"; timeout 60 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-150
  el "carveout 100, round $round"; HF_FLASHMLA_COMBINE_CARVEOUT=100 timeout 60 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-150
done
nvidia-smi --query-gpu=temperature.gpu,clocks.sm,power.draw --format=csv,noheader
el done
