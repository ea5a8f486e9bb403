#!/usr/bin/env bash
# Run 26: L2 prefetch of the next pair's pages (HF_FLASHMLA_L2_PREFETCH, default on) A/B, interleaved twice.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run26.tgz" o); }
trap finish EXIT
el build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
el smoke; timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || exit 1
for r in 1 2; do for v in 1 0; do
  el bench prefetch=$v $r; HF_FLASHMLA_L2_PREFETCH=$v timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_p${v}_$r.json > $O/bench_p${v}_$r.log 2>&1; grep -E "geomean|max GB|max TFLOP|incorrect" $O/bench_p${v}_$r.log
done; done
