#!/usr/bin/env bash
# Run 19: seesaw kernel (early-A, default): racecheck probe of the hand-over patterns, full benchmark with peers
# (tables + JSON + plot for README), generate check + main job, ncu sections of one compute-bound config.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run19.tgz" o); }
trap finish EXIT
el build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
el racecheck probe; timeout 90 bash scripts/racecheck_probe.sh 2>&1 | tee $O/racecheck_probe.log
el bench; timeout 260 python3 scripts/bench_kernel.py --configs all --impls ours,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/bench.json --plot $O/bench.png > $O/bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs" $O/bench.log; grep -E "^ *(b128_1K|b16_|uneven)" $O/bench.log | head
el generate; timeout 150 python3 scripts/gpu_generate_check.py > $O/generate.log 2>&1; echo rc $?; tail -4 $O/generate.log
el main job; timeout 100 python3 -m hf_flashmla > $O/main_job.log 2>&1; echo rc $?; tail -3 $O/main_job.log
el ncu; timeout 100 ncu --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis -k regex:seesaw -c 1 python3 scripts/kernel_smoke.py --profile-one 128,16384,2,128 > $O/ncu.txt 2>&1; echo rc $?; grep -E "Throughput|Pipe|Stall|Warp Cycles|Duration|SM Frequency|Busy" $O/ncu.txt | head -30
