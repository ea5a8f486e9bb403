#!/usr/bin/env bash
# Run 45: the split cost SPLIT_COMBINE_PAGES (threshold of the pieces and snapped schedules): 8 (default) vs 12 vs 16,
# main table (ours), interleaved 8, 16, 12, 8.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run45.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name --format=csv,noheader
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
B() { timeout 110 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 "$@"; }
for run in c8_1 c16_1 c12_1 c8_2; do
  c=${run#c}; c=${c%_*}
  el bench $run; HF_FLASHMLA_SPLIT_COMBINE_PAGES=$c B --json $O/bench_$run.json > $O/bench_$run.log 2>&1; grep -E "geomean|incorrect" $O/bench_$run.log
done
python3 scripts/compare_bench.py c8_1=$O/bench_c8_1.json c8_2=$O/bench_c8_2.json c12=$O/bench_c12_1.json c16=$O/bench_c16_1.json --configs 2>&1 | awk 'NR<=5 || ($3 != "1.000" || $4 != "1.000")' | grep -v varlen | head -60
