#!/usr/bin/env bash
# Run 85 (final, H100): the session's final code (run 80's kernel + no early Q on spare parts + the start_block
# helper). Build, smoke, every GPU test, memcheck, the full benchmark with peers (README tables). Carry [".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run85.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
grep -E "spill|Used" $O/build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -20 $O/smoke.log; exit 1; }
el bench; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 220 python3 scripts/bench_kernel.py --configs all --impls ours,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/bench.json --plot $O/bench.png > $O/bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs|median SM" $O/bench.log
python3 scripts/compare_bench.py run72=notes/device_runs/72_bench.json run80=notes/device_runs/80_bench.json run85=$O/bench.json 2>&1 | head -5
el tests; timeout 150 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -2
el memcheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 90 compute-sanitizer --tool memcheck python3 scripts/sanitize_case.py > $O/memcheck.log 2>&1; echo rc $?; grep -E "^case |ERROR SUMMARY" $O/memcheck.log
