#!/usr/bin/env bash
# Run 31: run 30's kernel (C). (1) the schedule's per-sequence overhead, 5 pages (default) vs 2, on the main and
# extra tables, interleaved 5 2 2 5; (2) debug timeline with the producer's issue times (pairs 8-11 of CTA (0, 0)).
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run31.tgz" o); }
trap finish EXIT
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
el smoke; timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || exit 1
for run in 5_1 2_1 2_2 5_2; do
  el bench overhead $run; HF_FLASHMLA_SEQUENCE_OVERHEAD_PAGES=${run:0:1} timeout 120 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_o$run.json > $O/bench_o$run.log 2>&1; grep -E "geomean|incorrect" $O/bench_o$run.log
done
el timeline; mkdir -p $O/tl; TIMELINE_DIR=$O/tl timeout 150 bash scripts/seesaw_timeline.sh 128,8192,2,128 128,16384,1,128 2>&1 | tee $O/timeline.log | grep -E "^(==|producer|  wg)"
