#!/usr/bin/env bash
# Run 82 (H100): gpu_check.sh's generate stage on the final code (generate check, the main job, evaluate, bf16).
OUT=$OUT/gen STAGES="build generate" STAGE_TIMEOUT=200 bash scripts/gpu_check.sh > /tmp/gen_stage.log 2>&1; echo rc $?
grep -E "^### |PASS|FAIL|match|tok/s|identical|error" /tmp/gen_stage.log | head -30; cp /tmp/gen_stage.log $OUT/82_generate_stage.log
