#!/usr/bin/env bash
# Run 42: schedule experiment: b = 64 configs on 132 parts, equal pieces (two per sequence, 128 parts) vs the balanced
# cut (scripts/schedule_experiment.py), twice.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run42.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name --format=csv,noheader
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
el exp1; timeout 200 python3 scripts/schedule_experiment.py --json $O/exp1.json 2>&1 | tee $O/exp1.log
el exp2; timeout 200 python3 scripts/schedule_experiment.py --only b64_L4096,b64_L16384 --json $O/exp2.json 2>&1 | tee $O/exp2.log
