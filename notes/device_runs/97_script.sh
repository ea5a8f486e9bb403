#!/usr/bin/env bash
# Run 97 (H100): the configs where FlashInfer's MLA decode was ahead in run 96 (sweep b128 s1 h128 base 1K: 112.6 vs
# 101.8 us; b64 h16 memory-bound: 0.992-0.998), ours under the default, even (whole sequences by count) and
# balanced schedules next to FlashInfer, in turn, two rounds (scripts/peer_gap_probe.py). Carry [".fi", ".whl"].
set -u -o pipefail; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; ( timeout 300 python3 scripts/peers/flashinfer_mla.py --build > /tmp/fi_jit.log 2>&1; echo "jit rc=$?" >> /tmp/fi_jit.log ) &
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/b.log 2>&1 || { tail -20 /tmp/b.log; echo BUILD FAILED; exit 1; }
wait; tail -2 /tmp/fi_jit.log
el probe
timeout 400 python3 scripts/peer_gap_probe.py --rounds 2 --only sweep_b128_sq1_h128_base1024,sweep_b128_sq1_h128_base2048,sweep_b128_sq1_h128_base16384,sweep_b128_sq1_h128_base32768,b64_L4096_sq1_h16_equal,b64_L8192_sq1_h16_equal,b64_L4096_sq2_h16_equal,b128_L4096_sq1_h128_equal 2>&1 | grep -v -i warn | tee $OUT/97_output.log
el done
