#!/usr/bin/env bash
# Run 84 (H100): small batches after the early Q skips parts the metadata shows empty (run 83 had them load Q:
# 116 of 132 CTAs at b = 1); the same probe with the in-kernel merge (HF_FLASHMLA_MERGE=inline: no combine launch).
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
C=b1_L1024_sq1_h16,b1_L4096_sq1_h16,b1_L16384_sq1_h16,b1_L4096_sq1_h128,b1_L16384_sq1_h128,b4_L4096_sq1_h16,b8_L4096_sq1_h128,b8_L16384_sq1_h16
el default; timeout 100 python3 scripts/small_work_probe.py --sms 132,66,33 --configs $C 2>&1 | grep -v -i warn | cut -c1-120
el inline; HF_FLASHMLA_MERGE=inline timeout 100 python3 scripts/small_work_probe.py --sms 132,66,33 --configs $C 2>&1 | grep -v -i warn | cut -c1-120
el done
