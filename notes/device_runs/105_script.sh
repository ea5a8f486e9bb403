#!/usr/bin/env bash
# Run 105 (H100): on the final code (run 104), compute-sanitizer racecheck (as run 92) and gpu_check.sh's generate stage (as
# run 82: generate check, the main job, evaluate, bf16 through the kernel).
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/b.log 2>&1 || { echo BUILD FAILED; exit 1; }
el racecheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 200 compute-sanitizer --tool racecheck --print-limit 50 python3 scripts/sanitize_case.py > $OUT/105_racecheck.log 2>&1; echo rc $?
grep -E "^case |RACECHECK SUMMARY|cases right" $OUT/105_racecheck.log
grep -oE "(Write|Read) access at .*(cuh|cu):[0-9]+" $OUT/105_racecheck.log | sed 's/at .*)+0x[0-9a-f]* in//' | sort | uniq -c
el generate; OUT=$OUT/gen STAGES="generate" STAGE_TIMEOUT=200 bash scripts/gpu_check.sh > /tmp/gen_stage.log 2>&1; echo rc $?
grep -E "^### |PASS|FAIL|match|tok/s|identical|error" /tmp/gen_stage.log | head -30; cp /tmp/gen_stage.log $OUT/105_generate_stage.log
el done
