#!/usr/bin/env bash
# Run 67 (H100): the page feed alone (67_feed_only.patch: consumers wait for each page and free it at once, no
# compute; results wrong on purpose) on all SMs and on 12.5% of them, next to the real kernel in the same call:
# does the two-stage feed by itself take the ~1.55 us per page of a lone CTA (then the landing time is the limit)
# or much less (then it is the wait of each refill for its pair's compute)? Also the smoke of the decode_call refactor.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; tail -30 /tmp/build.log; exit 1; }
el smoke; timeout 120 python3 scripts/kernel_smoke.py 2>&1 | tail -4
el real probe; timeout 60 python3 scripts/sm_scaling_probe.py --length 8192 --per-part 4 --fractions 1,0.125 2>&1 | tail -6
git apply notes/device_runs/67_feed_only.patch || patch -p1 < notes/device_runs/67_feed_only.patch || exit 1
el build feed-only; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; tail -30 /tmp/build.log; exit 1; }
el feed-only probe; timeout 60 python3 scripts/sm_scaling_probe.py --length 8192 --per-part 4 --fractions 1,0.125 2>&1 | tail -6
el done
