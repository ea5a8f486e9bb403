#!/usr/bin/env bash
# Run 136 (H100): the final kernel (run 135's F: producer 24 registers) through the benchmark with every peer, three
# passes (median per config; implementation order turning each pass), then ours alone, three passes, then racecheck
# (run 135's was cut by its timeout) in the time left. Carry [".fi", ".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cd $O && tar czf "$OUT/136_results.tgz" 136_* 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; ( timeout 300 python3 scripts/peers/flashinfer_mla.py --build > $O/fi_jit.log 2>&1; echo "jit rc=$?" >> $O/fi_jit.log ) &
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/136_build.log 2>&1 || { echo BUILD FAILED; grep error $O/136_build.log | head; exit 1; }
grep -c "setmaxnreg_dec<24>" csrc/mla_decode_common.cuh
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only 2>&1 | grep -E "FAIL|correctness"
wait; tail -1 $O/fi_jit.log
el "bench with peers, 3 passes"; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 330 python3 scripts/bench_kernel.py --configs all --impls ours,flashinfer,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --rounds 3 --json $O/136_bench.json --plot $O/136_bench.png > $O/136_bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs|median SM" $O/136_bench.log
grep -E "pass ./3 b128_L8192_sq2_h128_equal|pass ./3 b128_L16384_sq2_h128_equal" $O/136_bench.log | cut -c1-200
el "ours alone, 3 passes"; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 100 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --rounds 3 --json $O/136_ours.json > $O/136_ours.log 2>&1; echo rc $?
grep -E "geomean|max GB|max TFLOP|incorrect|errors|median SM" $O/136_ours.log
grep -E "pass ./3 b128_L8192_sq2_h128_equal|pass ./3 b128_L16384_sq2_h128_equal" $O/136_ours.log | cut -c1-200
left=$(( 585 - ($(date +%s) - t0) )); el "racecheck ($left s left)"
if [ $left -gt 30 ]; then PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout $left compute-sanitizer --tool racecheck --print-limit 40 python3 scripts/sanitize_case.py > $O/136_racecheck.log 2>&1; echo rc $?; grep -E "RACECHECK SUMMARY|cases right|hazard" $O/136_racecheck.log | head; fi
