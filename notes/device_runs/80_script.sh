#!/usr/bin/env bash
# Run 80 (H100): run 79's code (the final code), the full benchmark with peers again on a fresh machine: run 79's
# compute-bound timings ran at 66-69 C (run 72's at ~40 C) and came out 3-5% slower. GPU temperature printed first.
# Carry [".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run80.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.sm,power.draw --format=csv,noheader
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
el bench; timeout 220 python3 scripts/bench_kernel.py --configs all --impls ours,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/bench.json --plot $O/bench.png > $O/bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs|median SM" $O/bench.log
python3 scripts/compare_bench.py run72=notes/device_runs/72_bench.json run79=notes/device_runs/79_bench.json run80=$O/bench.json 2>&1 | head -5
