#!/usr/bin/env bash
# Run 133 (H100): consumers at 240 registers (producer 24; was 232 / 40) so that run 127's second Q chunk (latent
# chunk 3, RS m64n64k16) fits without spills. (B) = working tree: 240 + Q chunk in registers; (A) = HEAD (B with
# 133_q_regs240.patch reversed); (C) = A + 133_regs240.patch (the register split alone, a control).
# Prediction: Q K^T reads 8 KB less shared memory per page (288 -> 280 KB): +0.5..1% on compute-bound configs in
# cycles at locked base clock (run 20's rope chunk: +0.6..1.1%); memory-bound unchanged; C = A.
# SASS spill check, smoke + kernel GPU tests on B; ncu cycles at base clock for A, B, C; all configs A/B/C twice.
# Carry nothing.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cd $O && tar czf "$OUT/133_results.tgz" 133_* *.log 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
# NOTE (found in the output): the A build below ran in the repository root, not /tmp/A: "cd /tmp/A" is inside the
# backgrounded chain. Run 134 on builds A in its own subshell.
el build; rm -rf build /tmp/A /tmp/C; cp -r . /tmp/A
(cd /tmp/A && git apply -R notes/device_runs/133_q_regs240.patch && cp -r /tmp/A /tmp/C && (cd /tmp/C && git apply notes/device_runs/133_regs240.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_C.log 2>&1 || echo "BUILD C FAILED") &
 HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_A.log 2>&1 || echo "BUILD A FAILED"; wait) &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_B.log 2>&1 || { echo BUILD B FAILED; grep error $O/build_B.log | head; exit 1; }
wait; for v in A B C; do echo "build $v:"; grep -E "spill|C7520" $O/build_$v.log | sort | uniq -c; done
for d in /tmp/A . /tmp/C; do echo "sass $d:"; cuobjdump -sass $(ls $d/hf_flashmla/*.so | head -1) 2>/dev/null | grep -oE "\b(LDL|STL|HGMMA)\b" | sort | uniq -c | tr '\n' ' '; echo; done
el smoke B; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke_B.log 2>&1; grep -E "FAIL|correctness" $O/smoke_B.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_B.log || { tail -20 $O/smoke_B.log; exit 1; }
el kernel tests B; timeout 170 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py > $O/133_tests_B.log 2>&1; tail -2 $O/133_tests_B.log; grep -E "^FAILED" $O/133_tests_B.log | head -10
for v in A B C; do d=.; [ $v = A ] && d=/tmp/A; [ $v = C ] && d=/tmp/C; for cfg in 128,8192,2,128 128,8192,1,128; do
  el "ncu base $v $cfg"; (cd $d && timeout 60 ncu --clock-control base --metrics gpu__time_duration.sum,sm__cycles_elapsed.max,smsp__inst_executed.sum -k regex:seesaw -s 1 -c 1 python3 scripts/kernel_smoke.py --profile-one $cfg 2>&1 | grep -E "^\s+(gpu|sm__|smsp)")
done; done
for r in 1 2; do for v in A B C; do
  el "all $v $r"; d=.; [ $v = A ] && d=/tmp/A; [ $v = C ] && d=/tmp/C
  (cd $d && timeout 110 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/133_all_${v}_$r.json > $O/all_${v}_$r.log 2>&1); grep -E "geomean" $O/all_${v}_$r.log
done; done
J="A1=$O/133_all_A_1.json B1=$O/133_all_B_1.json C1=$O/133_all_C_1.json A2=$O/133_all_A_2.json B2=$O/133_all_B_2.json C2=$O/133_all_C_2.json"
python3 scripts/compare_bench.py $J 2>&1 | head -10
python3 scripts/compare_bench.py $J --configs 2>&1 | cut -c1-160 > $O/133_compare_configs.log
grep -E "sq2_h128|sq1_h128_equal|uneven|b16_" $O/133_compare_configs.log | head -30
