#!/usr/bin/env bash
# Run 63 (H100): TMA multicast in clusters of two m-block CTAs (HF_FLASHMLA_MULTICAST, default on where the
# m-blocks pair up). Build, smoke (hang check), the SM-scaling probe with and without, the main table M1/M0 twice
# in turn, the kernel GPU tests with multicast on.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run63.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit,temperature.gpu --format=csv,noheader
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
grep -E "spill|Used 168" $O/build.log | sort | uniq -c
el smoke M1; timeout 90 python3 scripts/kernel_smoke.py --check-only > $O/smoke_M1.log 2>&1; echo rc $?; grep -E "FAIL|correctness" $O/smoke_M1.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_M1.log || { tail -20 $O/smoke_M1.log; exit 1; }
for m in 1 0; do el probe M$m; HF_FLASHMLA_MULTICAST=$m timeout 100 python3 scripts/sm_scaling_probe.py --length 8192 --per-part 4 --fractions 1,0.5,0.125 2>&1 | grep -v "h_q 64:" | tee $O/probe_M$m.log; done
for round in 1 2; do for m in 1 0; do
  run=M${m}_$round; el main $run
  HF_FLASHMLA_MULTICAST=$m timeout 110 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/main_$run.json > $O/main_$run.log 2>&1; grep -E "geomean|max TFLOP|median SM" $O/main_$run.log
done; done
python3 scripts/compare_bench.py M0=$O/main_M0_1.json M1=$O/main_M1_1.json M0b=$O/main_M0_2.json M1b=$O/main_M1_2.json --configs 2>&1 | head -60
el tests; timeout 200 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py -x 2>&1 | tail -4
