#!/usr/bin/env bash
# Run 109 (H100): run 108 found the two-sided hand-overs racecheck-clean but ~1% slower on compute-bound configs.
# B' (working tree): two-sided hand-overs + P packed once (the smem copy stored from the packed registers) + WG1's
# page-local row max before kBarPA. A' = B' with 109_two_sided_handover.patch reversed (bar.arrive hand-overs, same
# reorders). A = HEAD's seesaw file. Smoke + racecheck (every sanitize case) on B', then the main table
# A / A' / B' twice, ours only.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cp $O/109_* "$OUT/" 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build /tmp/A /tmp/Ap; cp -r . /tmp/A; cp -r . /tmp/Ap
(cd /tmp/A && git checkout HEAD -- csrc/mla_decode_seesaw.cuh && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_A.log 2>&1 || echo "BUILD A FAILED") &
(cd /tmp/Ap && git apply -R notes/device_runs/109_two_sided_handover.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_Ap.log 2>&1 || echo "BUILD A' FAILED") &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_B.log 2>&1 || { echo BUILD B FAILED; grep error $O/build_B.log | head; exit 1; }
wait; grep -E "spill|Used 168" $O/build_B.log | sort | uniq -c
el smoke B; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke_B.log 2>&1; grep -E "FAIL|correctness" $O/smoke_B.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_B.log || { tail -20 $O/smoke_B.log; exit 1; }
el racecheck B; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 200 compute-sanitizer --tool racecheck --print-limit 40 python3 scripts/sanitize_case.py > $O/109_racecheck_B.log 2>&1; echo rc $?
grep -E "^case |RACECHECK SUMMARY|cases right" $O/109_racecheck_B.log
for r in 1 2; do for v in A Ap B; do
  el main $v $r; d=.; [ $v = A ] && d=/tmp/A; [ $v = Ap ] && d=/tmp/Ap
  (cd $d && timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/109_main_${v}_$r.json > $O/main_${v}_$r.log 2>&1); grep -E "geomean|median SM" $O/main_${v}_$r.log
done; done
J="A1=$O/109_main_A_1.json Ap1=$O/109_main_Ap_1.json B1=$O/109_main_B_1.json A2=$O/109_main_A_2.json Ap2=$O/109_main_Ap_2.json B2=$O/109_main_B_2.json"
python3 scripts/compare_bench.py $J 2>&1 | head -8
python3 scripts/compare_bench.py $J --configs 2>&1 | cut -c1-130 > $O/109_compare_configs.log
grep -E "h128" $O/109_compare_configs.log | head -24
