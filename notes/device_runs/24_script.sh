#!/usr/bin/env bash
# Run 24: final code (one consumer function): every GPU test, then the debug timeline.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cp /tmp/timeline_build.log /tmp/timeline_run.log $O/ 2>/dev/null; (cd /tmp && tar czf "$OUT/run24.tgz" o); }
trap finish EXIT
el build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
el gpu tests; timeout 230 python3 -m pytest -q -m "gpu or triton_gpu" tests/ > $O/gpu_tests.log 2>&1; tail -1 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
el timeline; timeout 200 bash scripts/seesaw_timeline.sh 128,16384,2,128 128,16384,1,128 128,16384,1,16 2>&1 | tee $O/timeline.log
