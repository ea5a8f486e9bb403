#!/usr/bin/env bash
# Run 68 (H100): where the extra (small) workloads' time goes, and fewer parts (scripts/small_work_probe.py).
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; tail -30 /tmp/build.log; exit 1; }
el probe; timeout 200 python3 scripts/small_work_probe.py --sms 132,116,99,66,44,33 2>&1 | grep -v Warning
el done
