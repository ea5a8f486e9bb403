#!/usr/bin/env bash
# Run 116 (final, H100): the final code (run 115's B: partials in the output's dtype except for one-wave combines,
# on run 109's two-sided hand-overs). Build (FlashInfer's JIT in the background), smoke, every GPU test, memcheck and
# racecheck on every sanitize case, then the full benchmark with every peer (run 115's peer run had one config
# timed during a host stall: b64 L4K h32 at 216 W, ours and our Triton path both 2x slow). Carry [".fi", ".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cp $O/116_* "$OUT/" 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; ( timeout 300 python3 scripts/peers/flashinfer_mla.py --build > $O/fi_jit.log 2>&1; echo "jit rc=$?" >> $O/fi_jit.log ) &
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep error $O/build.log | head; exit 1; }
wait; tail -1 $O/fi_jit.log; grep -E "spill|Used" $O/build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
el tests; timeout 200 python3 -m pytest -q -m gpu tests/ > $O/116_gpu_tests.log 2>&1; tail -2 $O/116_gpu_tests.log
el memcheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 60 compute-sanitizer --tool memcheck python3 scripts/sanitize_case.py > $O/116_memcheck.log 2>&1; echo rc $?; grep -E "ERROR SUMMARY|cases right" $O/116_memcheck.log
el racecheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 150 compute-sanitizer --tool racecheck --print-limit 40 python3 scripts/sanitize_case.py > $O/116_racecheck.log 2>&1; echo rc $?; grep -E "RACECHECK SUMMARY|cases right" $O/116_racecheck.log
el "bench with peers"; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 200 python3 scripts/bench_kernel.py --configs all --impls ours,flashinfer,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/116_bench.json --plot $O/116_bench.png > $O/116_bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs|median SM" $O/116_bench.log
