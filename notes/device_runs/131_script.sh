#!/usr/bin/env bash
# Run 131 (H100, diagnostic, HEAD): run 130 found the kernel cycle-bound below ~1.7 GHz (b128 L8K s2 h128: 1.407 M
# cycles at 1.42 GHz, 1.420 M at 1.67) with the tensor pipe active ~80% of cycles. Where are the idle 20%? The seesaw
# debug timeline (seven SM-clock marks per pair and warpgroup, CTA (0, 0), pairs 8..15) of that config with the clock
# locked at base by ncu, and at free clocks for comparison. Carry nothing.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s); O=/tmp/o; mkdir -p $O
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cd $O && tar czf "$OUT/131_results.tgz" *.log 2>/dev/null; }
trap finish EXIT
el "timeline build"; rm -rf build
HF_FLASHMLA_NVCC_FLAGS="-DHF_FLASHMLA_TIMELINE" HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
for cfg in 128,8192,2,128 128,16384,1,128; do
  el "free clocks $cfg"; python3 scripts/kernel_smoke.py --profile-one $cfg > $O/free_${cfg//,/_}.log 2>&1; grep -c "^timeline" $O/free_${cfg//,/_}.log
  el "base clock (ncu) $cfg"; timeout 150 ncu --clock-control base --metrics gpu__time_duration.sum,sm__cycles_elapsed.avg.per_second -k regex:seesaw -s 0 -c 3 python3 scripts/kernel_smoke.py --profile-one $cfg > $O/base_${cfg//,/_}.log 2>&1; grep -c "^timeline" $O/base_${cfg//,/_}.log; grep -E "gpu__time|per_second" $O/base_${cfg//,/_}.log | head -6
  python3 scripts/seesaw_timeline_summary.py $O/base_${cfg//,/_}.log 2>&1 | tail -12
done
