#!/usr/bin/env bash
# Run 108 (H100): (B) the per-pair hand-overs as bar.sync of both warpgroups (kBarPA after WG0's P_A V_A,L issue,
# kBarPB where WG1 published), no bar.arrive left in the kernel, vs (A) bar.arrive -> bar.sync (A = B with
# 108_two_sided_handover.patch reversed, built in a copy). Smoke on B, racecheck on B (every sanitize case),
# then the main table A/B/A/B, ours only.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cp $O/*.json $O/*.log "$OUT/" 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build /tmp/A; cp -r . /tmp/A
(cd /tmp/A && git apply -R notes/device_runs/108_two_sided_handover.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_A.log 2>&1 || echo "BUILD A FAILED") &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_B.log 2>&1 || { echo BUILD B FAILED; exit 1; }
wait; grep -E "spill|Used 168" $O/build_B.log | sort | uniq -c
el smoke B; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke_B.log 2>&1; grep -E "FAIL|correctness" $O/smoke_B.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_B.log || { tail -20 $O/smoke_B.log; exit 1; }
el racecheck B; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 200 compute-sanitizer --tool racecheck --print-limit 40 python3 scripts/sanitize_case.py > $O/108_racecheck_B.log 2>&1; echo rc $?
grep -E "^case |RACECHECK SUMMARY|cases right" $O/108_racecheck_B.log
for r in 1 2; do for v in A B; do
  el main $v $r; d=.; [ $v = A ] && d=/tmp/A
  (cd $d && timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/main_${v}_$r.json > $O/main_${v}_$r.log 2>&1); grep -E "geomean|max TFLOP|median SM" $O/main_${v}_$r.log
done; done
python3 scripts/compare_bench.py A1=$O/main_A_1.json B1=$O/main_B_1.json A2=$O/main_A_2.json B2=$O/main_B_2.json 2>&1 | head -6
python3 scripts/compare_bench.py A1=$O/main_A_1.json B1=$O/main_B_1.json A2=$O/main_A_2.json B2=$O/main_B_2.json --configs 2>&1 | cut -c1-120 > $O/108_compare_configs.log
grep -E "sq2_h128|sq1_h128" $O/108_compare_configs.log | head -14
