#!/usr/bin/env bash
# Run 81 (H100, warm machine after run 80): compute-sanitizer racecheck on the final code (the command of that call).
set -u; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/b.log 2>&1 || { echo BUILD FAILED; exit 1; }
PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 200 compute-sanitizer --tool racecheck --print-limit 50 python3 scripts/sanitize_case.py > $OUT/81_racecheck.log 2>&1; echo rc $?
grep -E "^case |RACECHECK SUMMARY" $OUT/81_racecheck.log
grep -oE "(Write|Read) access at .*(cuh|cu):[0-9]+" $OUT/81_racecheck.log | sed 's/at .*)+0x[0-9a-f]* in//' | sort | uniq -c
