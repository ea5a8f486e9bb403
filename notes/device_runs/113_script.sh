#!/usr/bin/env bash
# Run 113 (H100): (B) split partials in the output's dtype (bf16/fp16, lse still fp32), stored like the output
# (16-byte stores after the quad transpose), merged in fp32, vs (A) fp32 partials (HEAD; A = B with
# 113_partials_in_output_dtype.patch reversed, built in a copy). Smoke + kernel GPU tests on B, then all configs
# A/B/A/B (ours only) and small batches (small_work_probe) A/B twice.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cp $O/113_* "$OUT/" 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build /tmp/A; cp -r . /tmp/A
(cd /tmp/A && git apply -R notes/device_runs/113_partials_in_output_dtype.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_A.log 2>&1 || echo "BUILD A FAILED") &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_B.log 2>&1 || { echo BUILD B FAILED; grep error $O/build_B.log | head; exit 1; }
wait; grep -E "spill|Used" $O/build_B.log | sort | uniq -c
el smoke B; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke_B.log 2>&1; grep -E "FAIL|correctness" $O/smoke_B.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_B.log || { tail -20 $O/smoke_B.log; exit 1; }
el kernel tests B; timeout 150 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py 2>&1 | tail -2
for r in 1 2; do for v in A B; do
  el all $v $r; d=.; [ $v = A ] && d=/tmp/A
  (cd $d && timeout 110 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/113_all_${v}_$r.json > $O/all_${v}_$r.log 2>&1); grep -E "geomean" $O/all_${v}_$r.log
done; done
J="A1=$O/113_all_A_1.json B1=$O/113_all_B_1.json A2=$O/113_all_A_2.json B2=$O/113_all_B_2.json"
python3 scripts/compare_bench.py $J 2>&1 | head -6
python3 scripts/compare_bench.py $J --configs 2>&1 | cut -c1-120 > $O/113_compare_configs.log
grep -E "b64_L4096|uneven|1K|64K|sweep|b128_L16384_sq2_h128_varlen" $O/113_compare_configs.log | head -30
C=b1_L1024_sq1_h16,b1_L16384_sq1_h16,b1_L4096_sq1_h128,b8_L4096_sq1_h128,uneven_b4_sq4_h16
for r in 1 2; do for v in A B; do
  el "small $v $r"; d=.; [ $v = A ] && d=/tmp/A
  (cd $d && timeout 60 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100)
done; done 2>&1 | tee $O/113_small.log
