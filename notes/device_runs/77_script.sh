#!/usr/bin/env bash
# Run 77 (H100): the seesaw producer issues the first item's Q before reading the item's length (B, the working
# tree) vs after (A = B with notes/device_runs/77_early_q.patch reversed). Smoke + GPU tests on B (empty first items
# take the new path); all configs A/B/A/B, ours only; timeline of B (item 0's Q wait was 5700-7200 clk in runs 75-76).
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run77.tgz" o); }
trap finish EXIT
build() { rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build B; build B
patch -R -p1 < notes/device_runs/77_early_q.patch > /dev/null || { echo PATCH FAILED; exit 1; }
el build A; build A; patch -p1 < notes/device_runs/77_early_q.patch > /dev/null
use B; el smoke B; timeout 90 python3 scripts/kernel_smoke.py --check-only > $O/smoke_B.log 2>&1; grep -E "FAIL|correctness" $O/smoke_B.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_B.log || { tail -20 $O/smoke_B.log; exit 1; }
el tests B; timeout 200 python3 -m pytest -q -m gpu tests/ -x 2>&1 | tail -3
for r in 1 2; do for v in A B; do
  el all $v $r; use $v
  timeout 120 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/all_${v}_$r.json > $O/all_${v}_$r.log 2>&1; grep -E "geomean|max TFLOP" $O/all_${v}_$r.log
done; done
python3 scripts/compare_bench.py A1=$O/all_A_1.json B1=$O/all_B_1.json A2=$O/all_A_2.json B2=$O/all_B_2.json 2>&1 | head -6
python3 scripts/compare_bench.py A1=$O/all_A_1.json B1=$O/all_B_1.json A2=$O/all_A_2.json B2=$O/all_B_2.json --configs 2>&1 | cut -c1-110 > $O/compare_configs.txt
grep -E "uneven|1K|sweep" $O/compare_configs.txt
el timeline B; TRACE_FROM=28 timeout 150 bash scripts/seesaw_timeline.sh 128,4096,2,128 4641:45118:1730:1696,4,16 2>&1 | grep -E "item 0|launch|per CTA"
