#!/usr/bin/env bash
# Run 120 (H100): (B) the producer prefetches the next item's Q tile (tensor-map L2 prefetch) and first pair (one
# page per m-block CTA) into L2 two pairs before an item ends, vs (A) HEAD (B with 120_next_item_prefetch.patch
# reversed, built in a copy). Prediction: the ~7 us per item boundary at s2 h128 partly hidden: b128 L4K/L8K s2 h128
# (four items per CTA) 1-2% faster, b64 L8K s2 h128 (two) ~1%, single-item configs unchanged. Smoke + kernel GPU
# tests on B; all configs A/B three times (ours alone). Carry nothing.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cd $O && tar czf "$OUT/120_results.tgz" 120_* 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build /tmp/A; cp -r . /tmp/A
(cd /tmp/A && git apply -R notes/device_runs/120_next_item_prefetch.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_A.log 2>&1 || echo "BUILD A FAILED") &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_B.log 2>&1 || { echo BUILD B FAILED; grep error $O/build_B.log | head; exit 1; }
wait; grep -E "spill|Used 168" $O/build_B.log | sort | uniq -c
el smoke B; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke_B.log 2>&1; grep -E "FAIL|correctness" $O/smoke_B.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_B.log || { tail -20 $O/smoke_B.log; exit 1; }
el kernel tests B; timeout 150 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py 2>&1 | tail -2
for r in 1 2 3; do for v in A B; do
  el "all $v $r"; d=.; [ $v = A ] && d=/tmp/A
  (cd $d && timeout 110 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/120_all_${v}_$r.json > $O/all_${v}_$r.log 2>&1); grep -E "geomean" $O/all_${v}_$r.log
done; done
J="A1=$O/120_all_A_1.json B1=$O/120_all_B_1.json A2=$O/120_all_A_2.json B2=$O/120_all_B_2.json A3=$O/120_all_A_3.json B3=$O/120_all_B_3.json"
python3 scripts/compare_bench.py $J 2>&1 | head -8
python3 scripts/compare_bench.py $J --configs 2>&1 | cut -c1-140 > $O/120_compare_configs.log
grep -E "sq2_h128|sq1_h128|uneven|b16_|sweep" $O/120_compare_configs.log | head -40
