#!/usr/bin/env bash
# Run 125 (H100, diagnostic, final code): b128 L8K s2 h128 moved between ~840 and ~880-905 us in runs 123-124 at the
# same reported clock, while b128 L4K / L16K s2 h128 held. scripts/variance_probe.py: 4 timings on each of 3 input
# sets per process, four processes alternating the default (snapped) schedule and the balanced cut
# (HF_FLASHMLA_SPLIT_COMBINE_PAGES=15), 5 s apart: is the slow mode per process / per input set (addresses) or per
# timing (power)? Carry nothing.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
for r in 1 2; do for v in snapped balanced; do
  e=""; [ $v = balanced ] && e="HF_FLASHMLA_SPLIT_COMBINE_PAGES=15"
  el "$v $r"; sleep 5; env $e timeout 60 python3 scripts/variance_probe.py --config b128_L8192_sq2_h128 --repeats 4 --fresh 3 2>&1 | grep -v -i warn
done; done
el done
