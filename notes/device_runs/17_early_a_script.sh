#!/usr/bin/env bash
# Run 17: seesaw pair order A/B. early-A (default now): WG1 adds P_A V_A,R right after WG0's softmax (P_A
# unscaled, O_R rescaled by s_B before P_B V_B,R), so page A's stage is free by mid-pair; run 15/16 order
# (HF_FLASHMLA_SEESAW_EARLY_A=0): WG1 does P_B V_B,R first and P_A s_B V_A,R last. Interleaved twice.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run17.tgz" o); }
trap finish EXIT
el build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head -30; exit 1; }
el smoke; timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke_early.log 2>&1; grep -E "FAIL|correctness" $O/smoke_early.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_early.log || exit 1
for r in 1 2; do for v in early late; do
  [[ $v == early ]] && e=1 || e=0
  el bench $v $r; HF_FLASHMLA_SEESAW_EARLY_A=$e timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_${v}_$r.json > $O/bench_${v}_$r.log 2>&1; grep -E "geomean|max GB|max TFLOP|incorrect|errors" $O/bench_${v}_$r.log
done; done
el tests; timeout 150 python3 -m pytest -q -x -m gpu tests/test_kernel_gpu.py > $O/tests.log 2>&1; tail -2 $O/tests.log
el extra; timeout 80 python3 scripts/bench_kernel.py --configs extra --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_extra.json > $O/bench_extra.log 2>&1; grep -E "^ *(b128_1K|b16_|uneven)|published|geomean" $O/bench_extra.log | head -20
