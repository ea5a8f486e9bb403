#!/usr/bin/env bash
# Run 65 (H100): E2 = run 64's hand-over of the row sums with one shuffle before it (lanes 0 and 2 publish pair sums, readers add two halves) and the sums' uses moved after the wgmma issues
# vs the run-61 kernel = E0 (old_seesaw_for_run64.cuh, untracked). Build both, smoke E2,
# racecheck (first cases) on E2, main table E2/E0 twice in turn, the GPU tests on E2.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run65.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit,temperature.gpu --format=csv,noheader
build() { rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build; cp csrc/mla_decode_seesaw.cuh /tmp/new_seesaw.cuh; build E2
cp old_seesaw_for_run64.cuh csrc/mla_decode_seesaw.cuh; build E0; cp /tmp/new_seesaw.cuh csrc/mla_decode_seesaw.cuh
grep -E "spill|Used 168" $O/build_E2.log | sort | uniq -c
use E2; el smoke E2; timeout 90 python3 scripts/kernel_smoke.py --check-only > $O/smoke_E2.log 2>&1; grep -E "FAIL|correctness" $O/smoke_E2.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_E2.log || { tail -20 $O/smoke_E2.log; exit 1; }
el racecheck E2; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 75 compute-sanitizer --tool racecheck --print-limit 50 python3 scripts/sanitize_case.py > $O/racecheck_E2.log 2>&1; echo rc $?
grep -E "^case |RACECHECK SUMMARY" $O/racecheck_E2.log; grep -oE "(Write|Read) access at .*(cuh|cu):[0-9]+" $O/racecheck_E2.log | sed 's/at .*)+0x[0-9a-f]* in//' | sort | uniq -c
for round in 1 2; do for v in E2 E0; do
  run=${v}_$round; el main $run; use $v
  timeout 110 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/main_$run.json > $O/main_$run.log 2>&1; grep -E "geomean|max TFLOP|median SM" $O/main_$run.log
done; done
python3 scripts/compare_bench.py E0=$O/main_E0_1.json E2=$O/main_E2_1.json E0b=$O/main_E0_2.json E2b=$O/main_E2_2.json 2>&1 | head -6
use E2; el tests E2; timeout 150 python3 -m pytest -q -m gpu tests/ -x 2>&1 | tail -3
