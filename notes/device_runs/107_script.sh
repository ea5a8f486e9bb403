#!/usr/bin/env bash
# Run 107 (H100): what makes racecheck report the seesaw's epilogue row sums (a RAW across a bar.sync of both
# warpgroups, reported even with one item per CTA, case 0) and the m slots across items (case 3)?
# (1) the probe, patterns 1-10 (8-10 new: the kernel's role split with the per-page max hand-over, as bar.arrive or
# as a bar.sync of both sides, and with bulk copies on the producer's phases);
# (2) racecheck on cases 0 and 3 of sanitize_case.py for HEAD (V0) and three variants built in copies:
# V1 epilogue barrier id 5 instead of 1; V2 the producer thread stays until the consumers are done;
# V3 the per-pair hand-overs (kBarPA, kBarPB) as bar.sync of both warpgroups (no bar.arrive in the kernel).
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el probe; bash scripts/racecheck_probe.sh 2>&1 | tee $OUT/107_probe.log
el build; rm -rf build
for v in 1 2 3; do rm -rf /tmp/V$v; cp -r . /tmp/V$v; (cd /tmp/V$v && git apply notes/device_runs/107_rc_V$v.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build_$v.log 2>&1 || echo "BUILD V$v FAILED") & done
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build_0.log 2>&1 || echo "BUILD V0 FAILED"
wait
el racecheck
for v in 0 1 2 3; do
  d=.; [ $v = 0 ] || d=/tmp/V$v
  (cd $d && PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 300 compute-sanitizer --tool racecheck --print-limit 40 python3 scripts/sanitize_case.py --cases 0,3 > $OUT/107_racecheck_V$v.log 2>&1; echo "V$v rc $?" >> $OUT/107_racecheck_V$v.log) &
done
wait
el summary
for v in 0 1 2 3; do
  echo "== V$v"; grep -E "^case |RACECHECK SUMMARY|cases right|rc " $OUT/107_racecheck_V$v.log
  grep -oE "(Write|Read) access at .*(cuh|cu):[0-9]+" $OUT/107_racecheck_V$v.log | sed 's/at .*)+0x[0-9a-f]* in//' | sort | uniq -c
done
el done
