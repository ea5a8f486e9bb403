#!/usr/bin/env bash
# Run 15: first device run of the seesaw kernel (csrc/mla_decode_seesaw.cuh) next to the split kernel, one build.
# smoke (correctness + 12 timings) per kernel -> if seesaw is correct: bench main per kernel (same machine,
# same inputs) -> GPU kernel tests on seesaw. Everything under /tmp/o, tarred into $OUT at the end.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run15.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
el build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head -30; tail -5 $O/build.log; exit 1; }
grep -E "C7520|C7514|Used [0-9]+ registers|spill stores" $O/build.log | sed 's/^.*ptxas info *: //' | cut -c1-90 | sort | uniq -c
el smoke seesaw; HF_FLASHMLA_KERNEL=seesaw timeout 120 python3 scripts/kernel_smoke.py > $O/smoke_seesaw.log 2>&1; echo rc $?; grep -E "FAIL|correctness|TFLOP|Error|error" $O/smoke_seesaw.log | head -40
el smoke split; HF_FLASHMLA_KERNEL=split timeout 60 python3 scripts/kernel_smoke.py > $O/smoke_split.log 2>&1; grep -E "FAIL|correctness|TFLOP" $O/smoke_split.log | head -20
if grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_seesaw.log; then
  for k in seesaw split; do
    el bench $k; HF_FLASHMLA_KERNEL=$k timeout 110 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_$k.json > $O/bench_$k.log 2>&1; grep -E "geomean|max GB|max TFLOP|incorrect|errors" $O/bench_$k.log
  done
  el tests seesaw; HF_FLASHMLA_KERNEL=seesaw timeout 170 python3 -m pytest -q -x -m gpu tests/test_kernel_gpu.py > $O/tests_seesaw.log 2>&1; tail -4 $O/tests_seesaw.log
fi
