#!/usr/bin/env bash
# Run 137 (H100): a repeat of run 136 on the same code, to see whether its 45 of 45 reproduces: the benchmark with every
# peer, three passes (median per config; implementation order turning each pass), then ours alone, three passes.
# Carry [".fi", ".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cd $O && tar czf "$OUT/137_results.tgz" 137_* 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; ( timeout 300 python3 scripts/peers/flashinfer_mla.py --build > $O/fi_jit.log 2>&1; echo "jit rc=$?" >> $O/fi_jit.log ) &
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/137_build.log 2>&1 || { echo BUILD FAILED; grep error $O/137_build.log | head; exit 1; }
grep -c "setmaxnreg_dec<24>" csrc/mla_decode_common.cuh
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only 2>&1 | grep -E "FAIL|correctness"
wait; tail -1 $O/fi_jit.log
el "bench with peers, 3 passes"; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 330 python3 scripts/bench_kernel.py --configs all --impls ours,flashinfer,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --rounds 3 --json $O/137_bench.json --plot $O/137_bench.png > $O/137_bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs|median SM" $O/137_bench.log
grep -E "pass ./3 b128_L8192_sq2_h128_equal|pass ./3 b128_L16384_sq2_h128_equal" $O/137_bench.log | cut -c1-200
el "ours alone, 3 passes"; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 100 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --rounds 3 --json $O/137_ours.json > $O/137_ours.log 2>&1; echo rc $?
grep -E "geomean|max GB|max TFLOP|incorrect|errors|median SM" $O/137_ours.log
grep -E "pass ./3 b128_L8192_sq2_h128_equal|pass ./3 b128_L16384_sq2_h128_equal" $O/137_ours.log | cut -c1-200
