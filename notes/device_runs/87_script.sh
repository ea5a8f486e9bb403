#!/usr/bin/env bash
# Run 87 (H100): the fewer-pieces rule (schedule.py MIN_PIECE_PAGES, both implementations): every GPU test, then
# small_work_probe with the rule (B) and without it (A: HF_FLASHMLA_MIN_PIECE_PAGES=0), A/B/A/B at the full grid.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; tail -30 /tmp/build.log; exit 1; }
nvidia-smi --query-gpu=temperature.gpu,clocks.sm,power.draw --format=csv,noheader
el "gpu tests"; timeout 300 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -4
C=b1_L1024_sq1_h128,b1_L2048_sq1_h128,b1_L4096_sq1_h128,b1_L8192_sq1_h128,b1_L16384_sq1_h128,b1_L32768_sq1_h128,b2_L4096_sq1_h128,b2_L8192_sq1_h128,b1_L4096_sq1_h64,b2_L4096_sq1_h64,b4_L2048_sq1_h64,b4_L4096_sq1_h64,b1_L4096_sq2_h64,b1_L2048_sq2_h128,b1_L8192_sq2_h128
for round in 1 2; do
  el "A (rule off), round $round"; HF_FLASHMLA_MIN_PIECE_PAGES=0 timeout 60 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100
  el "B (rule on), round $round"; timeout 60 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100
done
nvidia-smi --query-gpu=temperature.gpu,clocks.sm,power.draw --format=csv,noheader
el done
