#!/usr/bin/env bash
# Run 54 (H100): L2 prefetch one pair ahead where two m-block CTAs share each page (num_m_blocks == 2, the default
# rule now) vs no prefetch (HF_FLASHMLA_PREFETCH_PAIRS=0), main table, interleaved twice; the kernel GPU tests on the
# new default; b128 L8K s2 h128 under the default schedule vs the balanced cut, alternated three times.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run54.tgz" o); }
trap finish EXIT
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
grep -E "spill|Used 168" $O/build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -20 $O/smoke.log; exit 1; }
for run in new_1 off_1 new_2 off_2; do
  el main $run; if [[ $run == off* ]]; then export HF_FLASHMLA_PREFETCH_PAIRS=0; else unset HF_FLASHMLA_PREFETCH_PAIRS; fi
  timeout 110 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/main_$run.json > $O/main_$run.log 2>&1; grep -E "geomean|max TFLOP|incorrect|median SM" $O/main_$run.log
done
unset HF_FLASHMLA_PREFETCH_PAIRS
for run in def_1 bal_1 def_2 bal_2 def_3 bal_3; do
  if [[ $run == bal* ]]; then export HF_FLASHMLA_SPLIT_COMBINE_PAGES=-100000; else unset HF_FLASHMLA_SPLIT_COMBINE_PAGES; fi
  echo "$run $(timeout 40 python3 scripts/bench_kernel.py --configs main --only b128_L8192_sq2_h128_equal --impls ours --warmup-ms 10 --rep-ms 40 2>&1 | grep -E '^   ours ' | tr -s ' ' | cut -d' ' -f3,6,9,10)"
done
unset HF_FLASHMLA_SPLIT_COMBINE_PAGES
el tests; timeout $(( 590 - ($(date +%s) - t0) )) python3 -m pytest -q -m gpu tests/ > $O/gpu_tests.log 2>&1; tail -1 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
