#!/usr/bin/env bash
# Run 44: epilogue row sums in one slot with a barrier after the reads (racecheck reported the two-slot parity
# scheme); racecheck + memcheck (scripts/sanitize_case.py), then the main table (ours) to see the cost.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run44.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name --format=csv,noheader
el sanitize; OUT=$O STAGES="build sanitize" SANITIZE_TIMEOUT=200 bash scripts/gpu_check.sh 2>&1 | grep -E "###|case |RACECHECK SUMMARY|ERROR SUMMARY|Race reported" | cut -c1-260
el bench; timeout 110 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench.json > $O/bench.log 2>&1; grep -E "geomean|max GB|max TFLOP|incorrect" $O/bench.log
python3 scripts/compare_bench.py run43=notes/device_runs/43_bench.json run44=$O/bench.json 2>&1 | head -4
