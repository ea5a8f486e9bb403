#!/usr/bin/env bash
# Run 93 (H100): the last config below FlashMLA (b128 L8K s2 h128, 862 us) and its neighbour at L16K on the final code,
# timed several times per process with the SM clock of each timing (scripts/variance_probe.py), processes apart.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/b.log 2>&1 || { echo BUILD FAILED; exit 1; }
nvidia-smi --query-gpu=temperature.gpu,clocks.sm,power.draw --format=csv,noheader
el "L8K"; timeout 120 python3 scripts/variance_probe.py --config b128_L8192_sq2_h128 --repeats 6 --fresh 2 2>&1 | grep -v -i warn
sleep 20; nvidia-smi --query-gpu=temperature.gpu,clocks.sm,power.draw --format=csv,noheader
el "L16K"; timeout 120 python3 scripts/variance_probe.py --config b128_L16384_sq2_h128 --repeats 4 --fresh 1 2>&1 | grep -v -i warn
sleep 20; nvidia-smi --query-gpu=temperature.gpu,clocks.sm,power.draw --format=csv,noheader
el "L8K again"; timeout 120 python3 scripts/variance_probe.py --config b128_L8192_sq2_h128 --repeats 6 --fresh 1 2>&1 | grep -v -i warn
el done
