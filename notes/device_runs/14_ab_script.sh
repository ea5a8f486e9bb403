#!/usr/bin/env bash
# A/B on one machine: current kernel (cluster commit 4fedef3) vs f877074 (run-7 kernel + per-device smem opt-in).
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build current; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_cur.log 2>&1 || { echo BUILD FAILED; tail -20 $O/build_cur.log; }
el bench current; timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_cur.json > $O/bench_cur.log 2>&1; grep -E "geomean|max GB|max TFLOP|incorrect|errors" $O/bench_cur.log
el multigpu bench; NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 timeout 120 python3 scripts/multi_gpu_check.py --bench --devices cuda:0,cuda:1 --json $O/multigpu_bench.json > $O/multigpu_bench.log 2>&1; echo rc $?; grep -v "Loading\|Writing" $O/multigpu_bench.log | tail -12
el swap to f877074 kernel; cp build/ab/mla_decode_kernel.cu build/ab/mla_decode.h build/ab/ptx_helpers.cuh csrc/
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_old.log 2>&1 || { echo BUILD FAILED; tail -20 $O/build_old.log; }
el bench old; timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_old.json > $O/bench_old.log 2>&1; grep -E "geomean|max GB|max TFLOP|incorrect|errors" $O/bench_old.log
el tests old; timeout 130 python3 -m pytest -q -x -m gpu tests/test_kernel_gpu.py tests/test_integration_gpu.py 2>&1 | tail -3
el extra old; timeout 60 python3 scripts/bench_kernel.py --configs extra --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_extra_old.json > $O/bench_extra_old.log 2>&1; grep -E "^ *(b128_1K|b16_|uneven)|published" $O/bench_extra_old.log | head -20
el done
