#!/usr/bin/env bash
# Run 75 (H100): the seesaw timeline across an item boundary (pairs 28..35 of CTA (0, 0) at b128 L4K s2 h128: the
# last four pairs of its first sequence and the first four of its second), to see where an item's ~6 us goes.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el timeline; mkdir -p $OUT/tl; TRACE_FROM=28 TIMELINE_DIR=$OUT/tl timeout 300 bash scripts/seesaw_timeline.sh 128,4096,2,128 2>&1 | cut -c1-300
el done
