#!/usr/bin/env bash
# Run 83 (H100): small batches as generate() runs them (b = 1..8, s_q = 1): flushed, back-to-back and per-kernel time
# at 132 / 66 / 33 / 16 SMs' worth of parts, to see whether the schedule splits tiny batches too finely.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
el probe; timeout 200 python3 scripts/small_work_probe.py --sms 132,66,33,16 --configs b1_L1024_sq1_h16,b1_L4096_sq1_h16,b1_L16384_sq1_h16,b1_L4096_sq1_h128,b1_L16384_sq1_h128,b4_L4096_sq1_h16,b8_L4096_sq1_h128,b8_L16384_sq1_h16 2>&1 | grep -v -i warn
el done
