#!/usr/bin/env bash
# Run 38: in-kernel merge v2 (merge_tile: a warp's eight rows loaded together instead of row after row; run 37's
# merge_row chain cost ~16 us per tile). Build, smoke, main table (ours) B = inline merge, A = combine kernel,
# B again (noise), then the kernel + schedule GPU tests.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run38.tgz" o); }
trap finish EXIT
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
grep -E "spill|Used|C7520" $O/build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; echo rc $?; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -20 $O/smoke.log; exit 1; }
B() { timeout 110 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 "$@"; }
el bench B1; B --json $O/bench_B1.json > $O/bench_B1.log 2>&1; grep -E "geomean|max GB|max TFLOP|incorrect|errors" $O/bench_B1.log
el bench A; HF_FLASHMLA_MERGE=combine B --json $O/bench_A.json > $O/bench_A.log 2>&1; grep -E "geomean|max TFLOP|incorrect" $O/bench_A.log
el bench B2; B --json $O/bench_B2.json > $O/bench_B2.log 2>&1; grep -E "geomean|max TFLOP|incorrect" $O/bench_B2.log
python3 scripts/compare_bench.py A=$O/bench_A.json B1=$O/bench_B1.json B2=$O/bench_B2.json --configs 2>&1 | grep -v varlen
el tests; timeout $(( 590 - ($(date +%s) - t0) )) python3 -m pytest -q -m gpu tests/test_kernel_gpu.py tests/test_schedule_gpu.py > $O/gpu_tests.log 2>&1; tail -1 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
