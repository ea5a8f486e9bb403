#!/usr/bin/env bash
# Run 66 (H100): clock_probe after its refactor (flushed timing through bench_kernel.flushed_event_median_ms), and
# the SM-scaling probe with the L2 prefetch forced off / on (does a lone CTA's page feed wait on HBM misses?).
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
el clock_probe; timeout 40 python3 scripts/clock_probe.py --configs b64_L4096_sq2_h128 --seconds 1 2>&1 | tail -3
for pf in 0 1; do el probe prefetch $pf; HF_FLASHMLA_PREFETCH_PAIRS=$pf timeout 60 python3 scripts/sm_scaling_probe.py --length 8192 --per-part 4 --fractions 1,0.125 2>&1 | grep -v "h_q 64:"; done
el done
