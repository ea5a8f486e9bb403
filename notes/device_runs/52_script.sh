#!/usr/bin/env bash
# Run 52 (H100): the final code after the schedule GPU-test fix and the merge-counter allocation change: build,
# smoke, every GPU test, racecheck probe (pattern 7: the epilogue exchange inside the kernel's role split), a
# clock/power probe on compute-bound configs (scripts/clock_probe.py), and the weak configs under the default
# schedule vs the balanced cut, interleaved twice. No carry needed.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run52.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv,noheader
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
grep -E "spill|Used|C7520" $O/build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; echo rc $?; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -20 $O/smoke.log; exit 1; }
el probe; timeout 90 bash scripts/racecheck_probe.sh 2>&1 | tee $O/racecheck_probe.log
el clock; timeout 90 python3 scripts/clock_probe.py 2>&1 | tee $O/clock_probe.log
W=b128_L8192_sq2_h128_equal,b128_L16384_sq2_h128_equal,b128_L16384_sq1_h128_equal,b64_L4096_sq2_h128_equal,b64_L8192_sq2_h128_equal,b64_L8192_sq1_h128_equal
for r in def_1 bal_1 def_2 bal_2; do
  el weak $r; if [[ $r == bal* ]]; then export HF_FLASHMLA_SPLIT_COMBINE_PAGES=-100000; else unset HF_FLASHMLA_SPLIT_COMBINE_PAGES; fi
  timeout 60 python3 scripts/bench_kernel.py --configs main --only $W --impls ours --warmup-ms 10 --rep-ms 40 --json $O/weak_$r.json > $O/weak_$r.log 2>&1; grep -E "^   ours " $O/weak_$r.log | tr -s ' ' | cut -d' ' -f3,6 | tr '\n' ' '; echo
done
unset HF_FLASHMLA_SPLIT_COMBINE_PAGES
el tests; timeout $(( 590 - ($(date +%s) - t0) )) python3 -m pytest -q -m gpu tests/ > $O/gpu_tests.log 2>&1; tail -1 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
