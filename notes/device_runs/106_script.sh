#!/usr/bin/env bash
# Run 106 (H100): (B) the decode kernel launched as a programmatic dependent of the stream's previous kernel (its CTAs
# launch and set up while that kernel's last blocks finish, griddepcontrol.wait before any input is read) vs
# (A) HF_FLASHMLA_PDL_DECODE=0 (plain stream order), same build; small_work_probe and a few table configs, A/B twice;
# every GPU test with B (the default). Carry [".whl"].
set -u -o pipefail; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/b.log 2>&1 || { tail -20 /tmp/b.log; echo BUILD FAILED; exit 1; }
C=b1_L1024_sq1_h16,b1_L4096_sq1_h16,b1_L16384_sq1_h16,b1_L1024_sq1_h128,b1_L4096_sq1_h128,b4_L2048_sq1_h64,b8_L4096_sq1_h128,uneven_b4_sq4_h16,b128_1K_sq1_h16,b16_sq16_1K_h16,b64_L4096_sq1_h16,b128_L8192_sq2_h128
for r in 1 2; do
  el "A (plain) round $r"; HF_FLASHMLA_PDL_DECODE=0 timeout 120 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100
  el "B (PDL) round $r"; timeout 120 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100
done 2>&1 | tee $OUT/106_output.log
el tests; timeout 220 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -3
el done
