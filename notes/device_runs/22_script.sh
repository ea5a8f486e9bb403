#!/usr/bin/env bash
# Run 22: seesaw consumer as one function for both warpgroups (shared epilogue; racecheck's epilogue report),
# smoke, racecheck, bench (ours), kernel tests, then the debug timeline of two configs.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run22.tgz" o); }
trap finish EXIT
el build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep error $O/build.log | head; exit 1; }
el smoke; timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || exit 1
el racecheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 130 compute-sanitizer --tool racecheck --print-limit 20 python3 scripts/sanitize_case.py > $O/sanitize_racecheck.log 2>&1; echo rc $?; grep -E "RACECHECK SUMMARY|cases right" $O/sanitize_racecheck.log; grep -oE "mla_decode_seesaw.cuh:[0-9]+" $O/sanitize_racecheck.log | sort | uniq -c
el bench; timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench.json > $O/bench.log 2>&1; grep -E "geomean|max GB|max TFLOP|incorrect" $O/bench.log
el tests; timeout 120 python3 -m pytest -q -x -m gpu tests/test_kernel_gpu.py > $O/tests.log 2>&1; tail -1 $O/tests.log
el timeline; timeout 150 bash scripts/seesaw_timeline.sh 128,16384,2,128 128,16384,1,128 128,16384,1,16 2>&1 | tee $O/timeline.log
