#!/usr/bin/env bash
# Run 119 (H100): the benchmark with the thermal guard (--cool-to 45: before each timing of a compute-bound config,
# every implementation alike, idle until the GPU is <= 45 C or stops cooling, at most 4 s), ours and FlashInfer over
# every config; then one plain pass of ours alone on the same (now warm) machine for comparison. Code = run 117's B.
# Carry [".fi", ".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cp $O/119_* "$OUT/" 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; ( timeout 300 python3 scripts/peers/flashinfer_mla.py --build > $O/fi_jit.log 2>&1; echo "jit rc=$?" >> $O/fi_jit.log ) &
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep error $O/build.log | head; exit 1; }
wait; tail -1 $O/fi_jit.log; grep -E "spill|Used 168" $O/build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only 2>&1 | grep -E "FAIL|correctness"
el "guarded bench, ours + flashinfer"; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 420 python3 scripts/bench_kernel.py --configs all --impls ours,flashinfer --cool-to 45 --cool-max-s 4 --warmup-ms 10 --rep-ms 40 --json $O/119_guarded.json --plot $O/119_guarded.png > $O/119_guarded.log 2>&1; echo rc $?
grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs|median SM|started at" $O/119_guarded.log
el "plain pass, ours"; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 90 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/119_plain.json > $O/119_plain.log 2>&1; echo rc $?
grep -E "geomean|max GB|max TFLOP|incorrect|errors|median SM" $O/119_plain.log
