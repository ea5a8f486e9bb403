#!/usr/bin/env bash
# Run 49 (diagnostic for the next session): GPU time per kernel for the two configs still below FlashMLA and their
# L16K s2 neighbour, with the default schedule, snapped whole sequences (split cost 16) and the in-kernel merge.
set -u; export PYTHONUNBUFFERED=1
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
C=b128_L8192_sq2_h128,b128_L16384_sq1_h128,b128_L16384_sq2_h128
echo "[default]"; python3 scripts/kernel_breakdown.py --configs $C 2>&1 | grep back-to-back
echo "[split cost 16]"; HF_FLASHMLA_SPLIT_COMBINE_PAGES=16 python3 scripts/kernel_breakdown.py --configs $C 2>&1 | grep back-to-back
echo "[inline merge]"; HF_FLASHMLA_MERGE=inline python3 scripts/kernel_breakdown.py --configs $C 2>&1 | grep back-to-back
echo "[default again]"; python3 scripts/kernel_breakdown.py --configs $C 2>&1 | grep back-to-back
