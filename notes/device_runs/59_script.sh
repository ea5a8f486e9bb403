#!/usr/bin/env bash
# Run 59 (H100): where the 5-8% run-to-run spread of b128 s2 h128 comes from (scripts/variance_probe.py): six
# timings on the same inputs and on three freshly allocated input sets per process, three processes with the
# inputs moved by 0 / 100 / 333 MB.
set -u; export PYTHONUNBUFFERED=1
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
for c in b128_L16384_sq2_h128 b128_L8192_sq2_h128; do for s in 0 100 333; do
  timeout 100 python3 scripts/variance_probe.py --config $c --shift-mb $s 2>&1 | grep -v Warning
done; done
