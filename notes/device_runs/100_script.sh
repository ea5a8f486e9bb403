#!/usr/bin/env bash
# Run 100 (H100): (B) the combine's rows of sequences split at most four ways load their lse and partials at once
# (merge_row_few_splits: one L2 round trip per row after the decode grid instead of three) vs (A) merge_row for all,
# A built from `100_few_splits.patch` reversed in a copy next to B. A/B/A/B on the pieces-mode configs (b = 64,
# two pieces per sequence) and a balanced one, next to FlashInfer; then every GPU test on B. Carry [".fi", ".whl"].
set -u -o pipefail; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; ( timeout 300 python3 scripts/peers/flashinfer_mla.py --build > /tmp/fi_jit.log 2>&1; echo "jit rc=$?" >> /tmp/fi_jit.log ) &
rm -rf build /tmp/A; cp -r . /tmp/A; (cd /tmp/A && git apply -R notes/device_runs/100_few_splits.patch && rm -rf build && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build_a.log 2>&1) &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/b.log 2>&1 || { tail -20 /tmp/b.log; echo BUILD FAILED; exit 1; }
wait; tail -1 /tmp/fi_jit.log; grep -q "error" /tmp/build_a.log && echo "BUILD A FAILED"
C=b64_L4096_sq1_h16_equal,b64_L4096_sq1_h32_equal,b64_L8192_sq1_h16_equal,b64_L4096_sq3_h16,b64_L4096_sq1_h64_equal,b64_L4096_sq2_h128_varlen,b128_L4096_sq1_h16_varlen
for r in 1 2; do
  el "A round $r"; (cd /tmp/A && timeout 150 python3 scripts/peer_gap_probe.py --rounds 1 --schedules default --only $C 2>&1 | grep -v -i warn | grep -E "^==|default|flashinfer ")
  el "B round $r"; timeout 150 python3 scripts/peer_gap_probe.py --rounds 1 --schedules default --only $C 2>&1 | grep -v -i warn | grep -E "^==|default|flashinfer "
done 2>&1 | tee $OUT/100_output.log
el tests; timeout 200 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -2
el done
