#!/usr/bin/env bash
# Run 57 (H100): polling waits instead of try_wait's suspend/wake (HF_FLASHMLA_SPIN: 1 the producer's waits for
# freed stage groups, 2 also the consumers' waits for landed chunks) vs the current kernel (0): build three, smoke
# S1 S2, main table S0 S1 S2 twice in turn.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run57.tgz" o); }
trap finish EXIT
build() { rm -rf build; HF_FLASHMLA_NVCC_FLAGS="-DHF_FLASHMLA_SPIN=$2" HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build; for v in 0 1 2; do build S$v $v; done; grep -E "spill|Used 168" $O/build_S2.log | sort | uniq -c
for v in 1 2; do use S$v; el smoke S$v; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke_S$v.log 2>&1; grep -E "FAIL|correctness" $O/smoke_S$v.log; done
for round in 1 2; do for v in 0 1 2; do
  run=S${v}_$round; el main $run; use S$v
  timeout 110 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/main_$run.json > $O/main_$run.log 2>&1; grep -E "geomean|max TFLOP|median SM" $O/main_$run.log
done; done
