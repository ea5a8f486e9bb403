#!/usr/bin/env bash
# Run 51 (final, H100): run 43 + split cost 16 pages from 128 query rows (run 50)
#. Build, smoke, the full benchmark with peers (README tables), every GPU test. Carry [".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run51.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name --format=csv,noheader
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
grep -E "spill|Used|C7520" $O/build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; echo rc $?; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -20 $O/smoke.log; exit 1; }
el bench; timeout 280 python3 scripts/bench_kernel.py --configs all --impls ours,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/bench.json --plot $O/bench.png > $O/bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs" $O/bench.log
python3 scripts/compare_bench.py run43=notes/device_runs/43_bench.json run51=$O/bench.json 2>&1 | head -4
el tests; timeout $(( 595 - ($(date +%s) - t0) )) python3 -m pytest -q -m gpu tests/ > $O/gpu_tests.log 2>&1; tail -1 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
