#!/usr/bin/env bash
# Run 74 (H100): debug timeline of the compute-bound s2 h128 configs: where an item's ~6.8 us goes (inferred from
# run 72: b128 L4K/L8K, 4 items per CTA, vs b64 L8K/L16K, 2 items, same page-tiles), and a varlen mix whose CTAs
# differ in items and pages (least-squares cost per page and per item).
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
VARLEN=$(python3 -c "
import random; random.seed(7)
print(':'.join(str(random.choice([1024,2048,3072,4096,6144,8192,12288,16384])) for _ in range(128)))")
el timeline; mkdir -p $OUT/tl; TIMELINE_DIR=$OUT/tl timeout 300 bash scripts/seesaw_timeline.sh 128,4096,2,128 128,8192,2,128 64,8192,2,128 "$VARLEN,2,128" 2>&1 | grep -v "^timeline" | grep -v "producer pair" | cut -c1-300
el done
