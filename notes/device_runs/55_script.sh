#!/usr/bin/env bash
# Run 55 (H100): the seesaw kernel launched in clusters of 2 along the m-blocks (HF_FLASHMLA_CLUSTER=2: a part's
# CTAs, which read the same pages, placed in pairs in one GPC; no cluster features inside the kernel) vs plain
# launches, main table interleaved twice; smoke and every GPU test with clusters on.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run55.tgz" o); }
trap finish EXIT
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
el smoke; HF_FLASHMLA_CLUSTER=2 timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -20 $O/smoke.log; exit 1; }
for run in cl2_1 cl1_1 cl2_2 cl1_2; do
  el main $run; export HF_FLASHMLA_CLUSTER=${run:2:1}
  timeout 110 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/main_$run.json > $O/main_$run.log 2>&1; grep -E "geomean|max TFLOP|incorrect|median SM" $O/main_$run.log
done
export HF_FLASHMLA_CLUSTER=2
el tests; timeout $(( 590 - ($(date +%s) - t0) )) python3 -m pytest -q -m gpu tests/ > $O/gpu_tests.log 2>&1; tail -1 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
