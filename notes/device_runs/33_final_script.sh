#!/usr/bin/env bash
# Run 33 (final, part 1): the kernel of run 32's D (README tables): smoke with timings, the full benchmark with peers
# (main + extra tables), the generate check and the main job. Part 2 (run 34): every GPU test and the sanitizers.
# Carry [".whl"] (SGLang's wheel for its peer).
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run33.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep error $O/build.log | head; exit 1; }
grep -E "spill|Used" $O/build.log | sort | uniq -c
el smoke; timeout 100 python3 scripts/kernel_smoke.py > $O/smoke.log 2>&1; grep -E "FAIL|correctness|TFLOP" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || exit 1
el bench; timeout 260 python3 scripts/bench_kernel.py --configs all --impls ours,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/bench.json --plot $O/bench.png > $O/bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs" $O/bench.log; grep -E "^== (b128_L1024|b16_|uneven)" -A4 $O/bench.log | grep -E "^==|ours " | head -12
el breakdown; timeout 60 python3 scripts/kernel_breakdown.py --configs b64_L4096_sq1_h16,b64_L4096_sq2_h128,b128_L8192_sq2_h128,b128_L16384_sq2_h128,b1024_L1024_sq2_h128 2>&1 | grep -v -i warn | tee $O/breakdown.log | cut -c1-150
el generate; timeout 150 python3 scripts/gpu_generate_check.py > $O/generate.log 2>&1; echo rc $?; tail -4 $O/generate.log
el main job; timeout 100 python3 -m hf_flashmla > $O/main_job.log 2>&1; echo rc $?; tail -3 $O/main_job.log
