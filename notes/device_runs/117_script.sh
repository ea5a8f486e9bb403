#!/usr/bin/env bash
# Run 117 (H100, prepared at the end of session 12, not yet run): (B) partial tiles with at most 16 valid rows stored 4 bytes per
# lane without transposes (run 114's C), the rest as HEAD, vs (A) HEAD (B = HEAD + 117_small_tile_partial_stores.patch, built
# in a copy). Smoke + kernel GPU tests on B; all configs A/B/A/B (ours only); small batches A/B twice; then the
# full benchmark with every peer on B. Carry [".fi", ".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cp $O/117_* "$OUT/" 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build /tmp/B; cp -r . /tmp/B
( timeout 300 python3 scripts/peers/flashinfer_mla.py --build > $O/fi_jit.log 2>&1; echo "jit rc=$?" >> $O/fi_jit.log ) &
(cd /tmp/B && git apply notes/device_runs/117_small_tile_partial_stores.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_B.log 2>&1 || echo "BUILD B FAILED") &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_A.log 2>&1 || { echo BUILD A FAILED; exit 1; }
wait; tail -1 $O/fi_jit.log; grep -E "spill|Used 168" $O/build_B.log | sort | uniq -c
el smoke B; (cd /tmp/B && timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke_B.log 2>&1); grep -E "FAIL|correctness" $O/smoke_B.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_B.log || { tail -20 $O/smoke_B.log; exit 1; }
el kernel tests B; (cd /tmp/B && timeout 150 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py 2>&1 | tail -2)
for r in 1 2; do for v in A B; do
  el all $v $r; d=.; [ $v = B ] && d=/tmp/B
  (cd $d && timeout 110 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/117_all_${v}_$r.json > $O/all_${v}_$r.log 2>&1); grep -E "geomean" $O/all_${v}_$r.log
done; done
J="A1=$O/117_all_A_1.json B1=$O/117_all_B_1.json A2=$O/117_all_A_2.json B2=$O/117_all_B_2.json"
python3 scripts/compare_bench.py $J 2>&1 | head -6
python3 scripts/compare_bench.py $J --configs 2>&1 | cut -c1-120 > $O/117_compare_configs.log
grep -E "_sq1_h16_|uneven|b16_|b128_1K" $O/117_compare_configs.log | head -20
S=b1_L1024_sq1_h16,b1_L16384_sq1_h16,b2_L2048_sq1_h16,b1_L4096_sq1_h128,b8_L4096_sq1_h128,uneven_b4_sq4_h16
for r in 1 2; do for v in A B; do
  el "small $v $r"; d=.; [ $v = B ] && d=/tmp/B
  (cd $d && timeout 60 python3 scripts/small_work_probe.py --sms 132 --configs $S 2>&1 | grep -v -i warn | cut -c1-100)
done; done 2>&1 | tee $O/117_small.log
el "bench with peers B"; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
(cd /tmp/B && timeout 200 python3 scripts/bench_kernel.py --configs all --impls ours,flashinfer,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/117_bench.json --plot $O/117_bench.png > $O/117_bench.log 2>&1; echo rc $?); grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs|median SM" $O/117_bench.log
