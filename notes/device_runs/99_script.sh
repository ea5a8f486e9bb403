#!/usr/bin/env bash
# Run 99 (H100): the memory-bound b = 64 configs where FlashInfer's MLA decode stays within 1% ahead (run 98:
# b64 L4K h16 124.2 vs 123.2 us): ours under the default schedule (two pieces per sequence, 128 CTAs), one part per
# sequence (64 CTAs, no combine), the balanced cut, and the default with the in-kernel merge, next to FlashInfer,
# three rounds (scripts/peer_gap_probe.py). Carry [".fi", ".whl"].
set -u -o pipefail; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; ( timeout 300 python3 scripts/peers/flashinfer_mla.py --build > /tmp/fi_jit.log 2>&1; echo "jit rc=$?" >> /tmp/fi_jit.log ) &
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/b.log 2>&1 || { tail -20 /tmp/b.log; echo BUILD FAILED; exit 1; }
wait; tail -1 /tmp/fi_jit.log
el probe
timeout 400 python3 scripts/peer_gap_probe.py --rounds 3 --only b64_L4096_sq1_h16_equal,b64_L4096_sq1_h32_equal,b64_L8192_sq1_h16_equal,b64_L4096_sq2_h32_equal,b64_L4096_sq3_h16,b64_L16384_sq1_h16_equal,b64_L4096_sq1_h64_equal 2>&1 | grep -v -i warn | tee $OUT/99_output.log
el done
