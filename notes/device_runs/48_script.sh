#!/usr/bin/env bash
# Run 48: __syncwarp around the epilogue's row-sum exchange (lanes read what lane 4q of their warp wrote): does
# racecheck's epilogue report go? Build, racecheck + memcheck on scripts/sanitize_case.py, smoke, main table (ours).
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run48.tgz" o); }
trap finish EXIT
el sanitize; OUT=$O STAGES="build sanitize" SANITIZE_TIMEOUT=150 bash scripts/gpu_check.sh > $O/gpu_check.log 2>&1
grep -E "RACECHECK SUMMARY|ERROR SUMMARY|cases right" $O/gpu_check.log | sort | uniq -c
grep -A1 "Race reported" $O/sanitize_racecheck.log | grep -oE "seesaw.cuh:[0-9]+" | paste - - | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only 2>&1 | grep correctness
el bench; timeout 110 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench.json > $O/bench.log 2>&1; grep -E "geomean|incorrect" $O/bench.log
python3 scripts/compare_bench.py run43=notes/device_runs/43_bench.json run45=notes/device_runs/45_bench_c8_2.json run48=$O/bench.json 2>&1 | head -5
