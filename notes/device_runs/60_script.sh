#!/usr/bin/env bash
# Run 60 (H100): clock_probe.py on the NVML monitor (gpu_monitor.py, now with temperature and the lowest clock) and
# one benchmark config, to check the refactor of both scripts.
set -u; export PYTHONUNBUFFERED=1
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
timeout 60 python3 scripts/clock_probe.py --configs b128_L8192_sq2_h128,b128_L16384_sq1_h16 --seconds 2 2>&1 | grep -v Warning
timeout 60 python3 scripts/bench_kernel.py --configs main --only b128_L8192_sq2_h128_equal --impls ours --warmup-ms 10 --rep-ms 40 --json /tmp/b.json 2>&1 | grep -E "NVML|ours |SM MHz|median SM"
python3 -c "import json; r=json.load(open('/tmp/b.json'))['configs'][0]['rows'][0]; print({k: r[k] for k in r if k in ('sm_mhz','min_sm_mhz','power_w','limits','max_temp_c')})"
