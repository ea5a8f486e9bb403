#!/usr/bin/env bash
# Run 90 (H100): the fewer-pieces rule with its pieces spread over the grid (run 89: packed cost 1-2 us): every GPU
# test; small_work_probe rule off (A: HF_FLASHMLA_MIN_PIECE_PAGES=0) / on (B), twice; and where a bigger grid's time
# goes at b = 1, h_q = 16 (132 vs 66 parts, same pieces): per-kernel GPU time with the combine in plain stream order.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; tail -30 /tmp/build.log; exit 1; }
nvidia-smi --query-gpu=temperature.gpu,clocks.sm,power.draw --format=csv,noheader
el "gpu tests"; timeout 200 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -2
C=b1_L4096_sq1_h128,b1_L8192_sq1_h128,b1_L16384_sq1_h128,b2_L4096_sq1_h128,b2_L8192_sq1_h128,b2_L4096_sq1_h64,b4_L2048_sq1_h64,b4_L4096_sq1_h64,b1_L4096_sq2_h64,b1_L2048_sq2_h128,b1_L4096_sq2_h128,b1_L1024_sq1_h128,b1_L4096_sq1_h64
for round in 1 2; do
  el "A (rule off), round $round"; HF_FLASHMLA_MIN_PIECE_PAGES=0 timeout 60 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100
  el "B (rule on), round $round"; timeout 60 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100
done
el "grid cost, PDL off"; HF_FLASHMLA_PDL=0 timeout 60 python3 scripts/small_work_probe.py --sms 132,66 --configs b1_L1024_sq1_h16,b1_L4096_sq1_h16,b2_L2048_sq1_h16 2>&1 | grep -v -i warn
el "grid cost, PDL on"; timeout 60 python3 scripts/small_work_probe.py --sms 132,66 --configs b1_L1024_sq1_h16,b1_L4096_sq1_h16 2>&1 | grep -v -i warn
el done
