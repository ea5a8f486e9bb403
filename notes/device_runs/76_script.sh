#!/usr/bin/env bash
# Run 76 (H100): the seesaw consumers read each item's plan (sequence, length, split counts) one item ahead (B, the
# working tree) vs reading it at the item boundary (A = B with notes/device_runs/76_item_plan.patch reversed).
# Smoke on B; all configs (main + extra) A/B/A/B, ours only; timeline of B across an item boundary.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run76.tgz" o); }
trap finish EXIT
build() { rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build B; build B
patch -R -p1 < notes/device_runs/76_item_plan.patch > /dev/null || { echo PATCH FAILED; exit 1; }
el build A; build A; patch -p1 < notes/device_runs/76_item_plan.patch > /dev/null
use B; el smoke B; timeout 90 python3 scripts/kernel_smoke.py --check-only > $O/smoke_B.log 2>&1; grep -E "FAIL|correctness" $O/smoke_B.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_B.log || { tail -20 $O/smoke_B.log; exit 1; }
for r in 1 2; do for v in A B; do
  el all $v $r; use $v
  timeout 120 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/all_${v}_$r.json > $O/all_${v}_$r.log 2>&1; grep -E "geomean|max TFLOP" $O/all_${v}_$r.log
done; done
python3 scripts/compare_bench.py A1=$O/all_A_1.json B1=$O/all_B_1.json A2=$O/all_A_2.json B2=$O/all_B_2.json 2>&1 | head -12
python3 scripts/compare_bench.py A1=$O/all_A_1.json B1=$O/all_B_1.json A2=$O/all_A_2.json B2=$O/all_B_2.json --configs 2>&1 | cut -c1-110 > $O/compare_configs.txt
el timeline B; TRACE_FROM=28 timeout 150 bash scripts/seesaw_timeline.sh 128,4096,2,128 2>&1 | grep -E "item|launch|per CTA"
