#!/usr/bin/env bash
# Run 121 (final, H100): the final code (run 117's B: 16-row partial tiles stored 4 bytes per lane; run 120's
# next-item prefetch reverted). Build (FlashInfer's JIT in the background), smoke, every GPU test, memcheck and
# racecheck on every sanitize case, the full benchmark with every peer, then gpu_check.sh's generate stage.
# Carry [".fi", ".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cd $O && tar czf "$OUT/121_results.tgz" 121_* 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; ( timeout 300 python3 scripts/peers/flashinfer_mla.py --build > $O/fi_jit.log 2>&1; echo "jit rc=$?" >> $O/fi_jit.log ) &
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/121_build.log 2>&1 || { echo BUILD FAILED; grep error $O/121_build.log | head; exit 1; }
grep -E "spill|Used 168" $O/121_build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only 2>&1 | grep -E "FAIL|correctness"
el tests; timeout 170 python3 -m pytest -q -m gpu tests/ > $O/121_gpu_tests.log 2>&1; tail -2 $O/121_gpu_tests.log
el memcheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 60 compute-sanitizer --tool memcheck python3 scripts/sanitize_case.py > $O/121_memcheck.log 2>&1; echo rc $?; grep -E "ERROR SUMMARY|cases right" $O/121_memcheck.log
el racecheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 120 compute-sanitizer --tool racecheck --print-limit 40 python3 scripts/sanitize_case.py > $O/121_racecheck.log 2>&1; echo rc $?; grep -E "RACECHECK SUMMARY|cases right" $O/121_racecheck.log
wait; tail -1 $O/fi_jit.log
el "bench with peers"; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 160 python3 scripts/bench_kernel.py --configs all --impls ours,flashinfer,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/121_bench.json --plot $O/121_bench.png > $O/121_bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs|median SM" $O/121_bench.log
el generate; OUT=$O/gen STAGES="generate" STAGE_TIMEOUT=150 timeout 170 bash scripts/gpu_check.sh > $O/121_generate_stage.log 2>&1; echo rc $?
grep -E "^### |PASS|FAIL|identical|error" $O/121_generate_stage.log | head -20
