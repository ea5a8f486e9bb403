#!/usr/bin/env bash
# Run 78 (H100): why the balanced cut loses at b128 L8K s2 h128 (run 70: +4% time, where its 501 page-tiles per CTA
# against the snapped 512 and the measured item costs predict about break-even). Decode and combine GPU time apart
# (HF_FLASHMLA_PDL=0), default vs balanced, twice; then the debug timeline of both schedules (per-CTA durations by
# items and pages, item marks of CTA (0, 0)).
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
for r in 1 2; do for v in default balanced; do
  [ $v = balanced ] && export HF_FLASHMLA_SPLIT_COMBINE_PAGES=-1000000000000
  el "$v $r"; HF_FLASHMLA_PDL=0 timeout 60 python3 scripts/kernel_breakdown.py --configs b128_L8192_sq2_h128,b128_L4096_sq2_h128 2>&1 | grep -v -i warn
  unset HF_FLASHMLA_SPLIT_COMBINE_PAGES
done; done
el timeline build; HF_FLASHMLA_NVCC_FLAGS="-DHF_FLASHMLA_TIMELINE" HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/tl_build.log 2>&1 || { echo TIMELINE BUILD FAILED; exit 1; }
for v in default balanced; do
  [ $v = balanced ] && export HF_FLASHMLA_SPLIT_COMBINE_PAGES=-1000000000000
  el "timeline $v"; timeout 100 python3 scripts/kernel_smoke.py --profile-one 128,8192,2,128 > /tmp/tl_$v.log 2>&1 || tail -3 /tmp/tl_$v.log
  python3 scripts/seesaw_timeline_summary.py /tmp/tl_$v.log; cp /tmp/tl_$v.log $OUT/
  unset HF_FLASHMLA_SPLIT_COMBINE_PAGES
done
el done
