#!/usr/bin/env bash
# Run 58 (final, H100): run 51's code + L2 prefetch one pair ahead where two m-block CTAs share each page (runs
# 53-54). Build, smoke, the full benchmark with peers and the SM clock of every timing (README tables), then the
# generate check, the main job and evaluate (gpu_check.sh's generate stage). Carry [".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run58.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
grep -E "spill|Used 168" $O/build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -20 $O/smoke.log; exit 1; }
el bench; timeout 300 python3 scripts/bench_kernel.py --configs all --impls ours,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/bench.json --plot $O/bench.png > $O/bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs|median SM" $O/bench.log
python3 scripts/compare_bench.py run51=notes/device_runs/51_bench.json run58=$O/bench.json 2>&1 | head -4
el generate; OUT=$O/gen STAGES=generate STAGE_TIMEOUT=$(( (590 - ($(date +%s) - t0)) / 3 )) bash scripts/gpu_check.sh > $O/gen_stage.log 2>&1; grep -E "^### (generate|main job|evaluate)|PASS|FAIL|match|tok/s" $O/gen_stage.log | head -20
