#!/usr/bin/env bash
# Run 89 (H100): does it matter where on the GPU a small batch's busy CTAs sit? small_work_probe --layouts: the
# schedule's rows permuted (busy parts first / evenly spread / last) at the full grid, and at half the grid; twice.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; tail -30 /tmp/build.log; exit 1; }
nvidia-smi --query-gpu=temperature.gpu,clocks.sm,power.draw --format=csv,noheader
C=b1_L1024_sq1_h16,b1_L4096_sq1_h16,b1_L8192_sq1_h16,b2_L2048_sq1_h16,b1_L16384_sq1_h16,b1_L1024_sq1_h128,b1_L2048_sq1_h128,b1_L4096_sq1_h128,b1_L4096_sq1_h64,b4_L1024_sq1_h64
for round in 1 2; do
  el "round $round"; timeout 150 python3 scripts/small_work_probe.py --sms 132,66 --layouts default,packed,spread,tail --configs $C 2>&1 | grep -v -i warn | cut -c1-105
done
nvidia-smi --query-gpu=temperature.gpu,clocks.sm,power.draw --format=csv,noheader
el done
