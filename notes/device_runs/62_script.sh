#!/usr/bin/env bash
# Run 62 (H100): is the kernel bound per SM or by a resource all SMs share? scripts/sm_scaling_probe.py runs the
# same per-CTA work on 100% .. 12.5% of the schedule's parts, for one, two and four CTAs per page.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run62.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit,temperature.gpu --format=csv,noheader
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
el probe L8K; timeout 150 python3 scripts/sm_scaling_probe.py --length 8192 --per-part 4 2>&1 | tee $O/probe_8k.log
el probe L16K x2; timeout 120 python3 scripts/sm_scaling_probe.py --length 16384 --per-part 2 --fractions 1,0.5,0.25 2>&1 | tee $O/probe_16k.log
