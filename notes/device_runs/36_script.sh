#!/usr/bin/env bash
# Run 36: A/B of (E) run 35's kernel (ab_base/csrc) against (F): the warpgroup that frees a stage group loads its
# next page itself (after a warpgroup-local named barrier) instead of a producer warp waiting on "empty" mbarriers;
# the producer thread keeps Q and each stage's first page. Smoke, main table E F, every kernel GPU test on F, then the
# full benchmark with peers on F (its main rows are F's second sample). Carry [".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run36.tgz" o); }
trap finish EXIT
build() { rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; md5sum /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build E; mv csrc /tmp/csrc_f; cp -r ab_base/csrc csrc; build E; rm -rf csrc; mv /tmp/csrc_f csrc
el build F; build F
grep -E "spill|Used" $O/build_F.log | sort | uniq -c
el smoke F; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; echo rc $?; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -5 $O/smoke.log; exit 1; }
for run in E_1 F_1; do
  v=${run:0:1}
  el bench $run; use $v; timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_$run.json > $O/bench_$run.log 2>&1; grep -E "geomean|max TFLOP|incorrect" $O/bench_$run.log
done
use F
el tests F; timeout 150 python3 -m pytest -q -m gpu tests/ > $O/gpu_tests.log 2>&1; tail -1 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
el bench F peers; timeout 230 python3 scripts/bench_kernel.py --configs all --impls ours,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/bench.json --plot $O/bench.png > $O/bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs" $O/bench.log
