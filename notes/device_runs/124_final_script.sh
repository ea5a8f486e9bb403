#!/usr/bin/env bash
# Run 124 (final, H100): the final code (run 123's B: lazy rescaling; run 117's 16-row partial stores; run 120's
# next-item prefetch reverted). Build (FlashInfer's JIT in the background), smoke, every GPU test, memcheck and
# racecheck on every sanitize case, the full benchmark with every peer, then gpu_check.sh's generate stage.
# Carry [".fi", ".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cd $O && tar czf "$OUT/124_results.tgz" 124_* 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; ( timeout 300 python3 scripts/peers/flashinfer_mla.py --build > $O/fi_jit.log 2>&1; echo "jit rc=$?" >> $O/fi_jit.log ) &
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/124_build.log 2>&1 || { echo BUILD FAILED; grep error $O/124_build.log | head; exit 1; }
grep -E "spill|Used 168" $O/124_build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only 2>&1 | grep -E "FAIL|correctness"
el tests; timeout 170 python3 -m pytest -q -m gpu tests/ > $O/124_gpu_tests.log 2>&1; tail -2 $O/124_gpu_tests.log
el memcheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 60 compute-sanitizer --tool memcheck python3 scripts/sanitize_case.py > $O/124_memcheck.log 2>&1; echo rc $?; grep -E "ERROR SUMMARY|cases right" $O/124_memcheck.log
el racecheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 120 compute-sanitizer --tool racecheck --print-limit 40 python3 scripts/sanitize_case.py > $O/124_racecheck.log 2>&1; echo rc $?; grep -E "RACECHECK SUMMARY|cases right" $O/124_racecheck.log
wait; tail -1 $O/fi_jit.log
el "bench with peers"; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 160 python3 scripts/bench_kernel.py --configs all --impls ours,flashinfer,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/124_bench.json --plot $O/124_bench.png > $O/124_bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs|median SM" $O/124_bench.log
el generate; OUT=$O/gen STAGES="generate" STAGE_TIMEOUT=150 timeout 170 bash scripts/gpu_check.sh > $O/124_generate_stage.log 2>&1; echo rc $?
grep -E "^### |PASS|FAIL|identical|error" $O/124_generate_stage.log | head -20
el "plain pass, ours"; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 90 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/124_ours.json > $O/124_ours.log 2>&1; echo rc $?
grep -E "geomean|max GB|max TFLOP|incorrect|errors|median SM" $O/124_ours.log
