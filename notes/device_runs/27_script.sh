#!/usr/bin/env bash
# Run 27 (diagnostic): where the fixed costs go. (1) GPU time per kernel (decode / combine) for configs of equal
# total pages but different batch (items per part); (2) the debug timeline: CTA start/end spread, cost per page
# and per item, item boundaries of CTA (0, 0).
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run27.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
el build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
el smoke; timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
el breakdown
C=""
for sh in sq2_h128 sq1_h128 sq1_h16; do for bl in b16_L65536 b32_L32768 b64_L16384 b128_L8192 b256_L4096 b512_L2048 b1024_L1024; do C="$C,${bl}_$sh"; done; done
C="$C,b64_L4096_sq2_h128,b64_L4096_sq1_h16,b128_L16384_sq2_h128"
timeout 200 python3 scripts/kernel_breakdown.py --configs ${C#,} 2>&1 | tee $O/breakdown.log | cut -c1-200
el timeline
timeout 200 bash scripts/seesaw_timeline.sh 64,4096,2,128 128,8192,2,128 128,16384,2,128 64,4096,1,16 64,4096,1,128 2>&1 | tee $O/timeline.log | grep -v "^timeline"
