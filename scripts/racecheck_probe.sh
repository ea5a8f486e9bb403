#!/usr/bin/env bash
# Builds scripts/racecheck_probe.cu and runs racecheck on each hand-over pattern (device only).
set -u
nvcc -std=c++17 -O2 -lineinfo -gencode=arch=compute_90a,code=sm_90a -o /tmp/racecheck_probe scripts/racecheck_probe.cu || exit 1
for p in 1 2 3 4 5 6 7 8 9 10; do
  echo "pattern $p: $(compute-sanitizer --tool racecheck /tmp/racecheck_probe $p 2>&1 | grep -E 'RACECHECK SUMMARY|hazard' | tail -1)"
done
