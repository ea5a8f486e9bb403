#!/usr/bin/env bash
# Run 134 (H100): what run 133 left open, in cycles at locked base clock (no power noise), all on HEAD's kernel:
#  (A) HEAD: consumers 232 / producer 40 registers, Q's rope chunk in registers (RS Q K^T on chunk 8)
#  (D) 134_rope_smem.patch: the rope chunk's Q K^T from shared memory too (SS everywhere; run 133 found the RS form
#      on a second chunk +2.6% cycles, so does run 20's rope chunk still pay?)
#  (E) 134_regs224.patch: consumers 224 / producer 56 (run 133: 240 / 24 alone cost +2%; does ptxas do better
#      with a tighter budget? HEAD fits 224 without spills, 216 spills)
#  (F) 134_producer24.patch: consumers 232 / producer 24 (is run 133's +2% the 24-register producer?)
# Prediction: D within +-0.5% of A (8 KB of smem reads vs the RS form's cost); E and F = A.
# ncu cycles for each; smoke on each; all configs A/D/E/F once, then A/D/E again. Carry nothing.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cd $O && tar czf "$OUT/134_results.tgz" 134_* *.log 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build /tmp/D /tmp/E /tmp/F
for v in D E F; do cp -r . /tmp/$v; done
(cd /tmp/D && git apply notes/device_runs/134_rope_smem.patch)
(cd /tmp/E && git apply notes/device_runs/134_regs224.patch)
(cd /tmp/F && git apply notes/device_runs/134_producer24.patch)
for v in D E F; do (cd /tmp/$v && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$v.log 2>&1 || echo "BUILD $v FAILED") & done
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_A.log 2>&1 || echo "BUILD A FAILED"
wait
dir() { case $1 in A) echo .;; *) echo /tmp/$1;; esac; }
for v in A D E F; do echo "build $v: $(ls $(dir $v)/hf_flashmla/*.so 2>/dev/null | wc -l) .so; $(grep -E 'spill' $O/build_$v.log | sort | uniq -c | tr '\n' ' ')"; done
for v in A D E F; do el smoke $v; (cd $(dir $v) && timeout 60 python3 scripts/kernel_smoke.py --check-only 2>&1 | grep -E "FAIL|correctness"); done
for cfg in 128,8192,2,128 128,8192,1,128; do for v in A D E F A; do
  el "ncu base $v $cfg"; (cd $(dir $v) && timeout 60 ncu --clock-control base --metrics gpu__time_duration.sum,sm__cycles_elapsed.max,smsp__inst_executed.sum -k regex:seesaw -s 1 -c 1 python3 scripts/kernel_smoke.py --profile-one $cfg 2>&1 | grep -E "^\s+(gpu|sm__|smsp)")
done; done
for r in 1 2; do for v in A D E F; do
  [ $r = 2 ] && [ $v = F ] && continue
  el "all $v $r"; (cd $(dir $v) && timeout 110 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/134_all_${v}_$r.json > $O/all_${v}_$r.log 2>&1); grep -E "geomean" $O/all_${v}_$r.log
done; done
J="A1=$O/134_all_A_1.json D1=$O/134_all_D_1.json E1=$O/134_all_E_1.json F1=$O/134_all_F_1.json A2=$O/134_all_A_2.json D2=$O/134_all_D_2.json E2=$O/134_all_E_2.json"
python3 scripts/compare_bench.py $J 2>&1 | head -10
python3 scripts/compare_bench.py $J --configs 2>&1 | cut -c1-170 > $O/134_compare_configs.log
grep -E "sq2_h128|sq1_h128_equal" $O/134_compare_configs.log | head -30
