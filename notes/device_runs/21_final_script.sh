#!/usr/bin/env bash
# Run 21: final seesaw build (Q's rope chunk in registers): smoke, every GPU test, memcheck, racecheck, racecheck
# probe (patterns 1-6), full benchmark with peers (README tables).
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run21.tgz" o); }
trap finish EXIT
el build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep error $O/build.log | head; exit 1; }
el smoke; timeout 100 python3 scripts/kernel_smoke.py > $O/smoke.log 2>&1; grep -E "FAIL|correctness|TFLOP" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || exit 1
el bench; timeout 200 python3 scripts/bench_kernel.py --configs all --impls ours,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/bench.json --plot $O/bench.png > $O/bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs" $O/bench.log; grep -E "^ *(b128_1K|b16_|uneven)" $O/bench.log | head
el gpu tests; timeout 230 python3 -m pytest -q -m "gpu or triton_gpu" tests/ > $O/gpu_tests.log 2>&1; tail -2 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
el memcheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 60 compute-sanitizer --tool memcheck --print-limit 20 python3 scripts/sanitize_case.py > $O/sanitize_memcheck.log 2>&1; echo rc $?; grep -E "ERROR SUMMARY|cases right" $O/sanitize_memcheck.log
el probe; timeout 60 bash scripts/racecheck_probe.sh 2>&1 | tee $O/racecheck_probe.log
el racecheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 130 compute-sanitizer --tool racecheck --print-limit 20 python3 scripts/sanitize_case.py > $O/sanitize_racecheck.log 2>&1; echo rc $?; grep -E "RACECHECK SUMMARY|cases right" $O/sanitize_racecheck.log; grep -oE "mla_decode_seesaw.cuh:[0-9]+" $O/sanitize_racecheck.log | sort | uniq -c
