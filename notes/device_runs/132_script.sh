#!/usr/bin/env bash
# Run 132 (H100): (B) bf16 softmax exps two at a time through ex2.approx.f16x2 (the SFU's 16 lanes per clock per SM held
# each warpgroup's 32 fp32 exps per thread to >= 256 clocks per page), fp16 unchanged, vs (A) HEAD (B with
# 132_ex2_f16x2.patch reversed). Prediction: where the softmax is on the hand-over path (run 131: WG1 waited for P_A
# in some pairs) s2 h128 1-3% faster in cycles; memory-bound unchanged. SASS MUFU forms; smoke, kernel GPU tests and
# the generate check on B; ncu cycles at locked base clock for both (no power noise); all configs A/B twice.
# Carry nothing.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cd $O && tar czf "$OUT/132_results.tgz" 132_* *.log 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build /tmp/A; cp -r . /tmp/A
(cd /tmp/A && git apply -R notes/device_runs/132_ex2_f16x2.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_A.log 2>&1 || echo "BUILD A FAILED") &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_B.log 2>&1 || { echo BUILD B FAILED; grep error $O/build_B.log | head; exit 1; }
wait; grep -E "spill|Used 168|C7520" $O/build_B.log | sort | uniq -c
cuobjdump -sass $(ls hf_flashmla/*.so | head -1) 2>/dev/null | grep -oE "MUFU\.[A-Z0-9_.]+" | sort | uniq -c
el smoke B; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke_B.log 2>&1; grep -E "FAIL|correctness" $O/smoke_B.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_B.log || { tail -20 $O/smoke_B.log; exit 1; }
el kernel tests B; timeout 170 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py > $O/132_tests_B.log 2>&1; tail -2 $O/132_tests_B.log; grep -E "^FAILED" $O/132_tests_B.log | head -10
el generate check B; timeout 90 python3 scripts/gpu_generate_check.py > $O/132_generate_B.log 2>&1; echo rc $?; tail -3 $O/132_generate_B.log
for v in A B; do d=.; [ $v = A ] && d=/tmp/A; for cfg in 128,8192,2,128 128,8192,1,128; do
  el "ncu base $v $cfg"; (cd $d && timeout 60 ncu --clock-control base --metrics gpu__time_duration.sum,sm__cycles_elapsed.max,sm__inst_executed_pipe_xu.sum -k regex:seesaw -s 1 -c 1 python3 scripts/kernel_smoke.py --profile-one $cfg 2>&1 | grep -E "^\s+(gpu|sm__)")
done; done
for r in 1 2; do for v in A B; do
  el "all $v $r"; d=.; [ $v = A ] && d=/tmp/A
  (cd $d && timeout 110 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/132_all_${v}_$r.json > $O/all_${v}_$r.log 2>&1); grep -E "geomean" $O/all_${v}_$r.log
done; done
J="A1=$O/132_all_A_1.json B1=$O/132_all_B_1.json A2=$O/132_all_A_2.json B2=$O/132_all_B_2.json"
python3 scripts/compare_bench.py $J 2>&1 | head -8
python3 scripts/compare_bench.py $J --configs 2>&1 | cut -c1-140 > $O/132_compare_configs.log
grep -E "sq2_h128|sq1_h128_equal|uneven|b16_" $O/132_compare_configs.log | head -30
