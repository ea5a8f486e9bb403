#!/usr/bin/env bash
# Run 37: (1) schedule with whole sequences where b > parts (snapped), (2) in-kernel merge of split sequences by the
# piece that finishes last (no combine kernel; a part's last item first). Build, smoke, main table (ours) for
# B = inline merge (default) and A = HF_FLASHMLA_MERGE=combine, the snapped configs with the balanced cut
# (HF_FLASHMLA_SPLIT_COMBINE_PAGES=-1e12: exactly the old schedule for those, as b > parts) under both merges,
# then the kernel + schedule GPU tests.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run37.tgz" o); }
trap finish EXIT
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
grep -E "spill|Used|C7520" $O/build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; echo rc $?; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -20 $O/smoke.log; exit 1; }
SNAPPED=b64_L4096_sq2_h128_equal,b64_L8192_sq2_h128_equal,b128_L4096_sq1_h128_equal,b128_L4096_sq2_h64_equal,b128_L4096_sq2_h128_equal,b128_L8192_sq1_h128_equal,b128_L8192_sq2_h64_equal
B() { timeout 110 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 "$@"; }
el bench B; B --json $O/bench_B.json > $O/bench_B.log 2>&1; grep -E "geomean|max GB|max TFLOP|incorrect|errors" $O/bench_B.log
el bench A; HF_FLASHMLA_MERGE=combine B --json $O/bench_A.json > $O/bench_A.log 2>&1; grep -E "geomean|max TFLOP|incorrect" $O/bench_A.log
el bench Bbal; HF_FLASHMLA_SPLIT_COMBINE_PAGES=-1000000000000 B --only $SNAPPED --json $O/bench_Bbal.json > $O/bench_Bbal.log 2>&1; grep -E "geomean|incorrect" $O/bench_Bbal.log
el bench Abal; HF_FLASHMLA_MERGE=combine HF_FLASHMLA_SPLIT_COMBINE_PAGES=-1000000000000 B --only $SNAPPED --json $O/bench_Abal.json > $O/bench_Abal.log 2>&1; grep -E "geomean|incorrect" $O/bench_Abal.log
python3 scripts/compare_bench.py A=$O/bench_A.json B=$O/bench_B.json 2>&1 | tail -8
python3 scripts/compare_bench.py Abal=$O/bench_Abal.json A=$O/bench_A.json Bbal=$O/bench_Bbal.json B=$O/bench_B.json --configs 2>&1 | tail -14
el tests; timeout $(( 590 - ($(date +%s) - t0) )) python3 -m pytest -q -m gpu tests/test_kernel_gpu.py tests/test_schedule_gpu.py -x > $O/gpu_tests.log 2>&1; tail -1 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
