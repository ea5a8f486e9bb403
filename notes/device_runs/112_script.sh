#!/usr/bin/env bash
# Run 112 (H100): on the final code (runs 110-111): gpu_check.sh's generate stage (generate check, main job,
# evaluate, bf16 through the kernel), then variance_probe.py on b128 L8K s2 h128 (as run 93: the first timings of a
# process run at full clock).
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/b.log 2>&1 || { echo BUILD FAILED; exit 1; }
el generate; OUT=$OUT/gen STAGES="generate" STAGE_TIMEOUT=200 bash scripts/gpu_check.sh > /tmp/gen_stage.log 2>&1; echo rc $?
grep -E "^### |PASS|FAIL|match|tok/s|identical|error" /tmp/gen_stage.log | head -30; cp /tmp/gen_stage.log $OUT/112_generate_stage.log
sleep 15; nvidia-smi --query-gpu=temperature.gpu,clocks.sm,power.draw --format=csv,noheader
el "L8K"; timeout 120 python3 scripts/variance_probe.py --config b128_L8192_sq2_h128 --repeats 6 --fresh 1 2>&1 | grep -v -i warn | tee $OUT/112_variance.log
el done
