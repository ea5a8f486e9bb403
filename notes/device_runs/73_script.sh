#!/usr/bin/env bash
# Run 73 (H100): the diagnostics after their refactor (kernel_breakdown's named_call / back_to_back_us used by
# clock_probe and small_work_probe), one config each.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
el breakdown; timeout 40 python3 scripts/kernel_breakdown.py --configs b128_L8192_sq2_h128 2>&1 | grep -v -i warn
el clock; timeout 40 python3 scripts/clock_probe.py --configs b64_L4096_sq2_h128 --seconds 1 2>&1 | tail -2
el small; timeout 40 python3 scripts/small_work_probe.py --configs uneven_b4_sq4_h16 --sms 132 2>&1 | grep -v -i warn
el done
