#!/usr/bin/env bash
# Run 69 (H100): combine kernel as a programmatic dependent of the decode kernel + one-pass lse + 16-warp shared-row
# combine with batched weight loads (B, this commit) vs the previous commit's combine (A). Small-work probe on A, B,
# B without PDL; main table A/B; smoke and the GPU tests on B.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run69.tgz" o); }
trap finish EXIT
build() { rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build B; build B
for f in csrc/*; do git show HEAD~1:$f > $f 2>/dev/null; done; el build A; build A; git checkout -- csrc
use B; el smoke B; timeout 90 python3 scripts/kernel_smoke.py --check-only > $O/smoke_B.log 2>&1; grep -E "FAIL|correctness" $O/smoke_B.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_B.log || { tail -20 $O/smoke_B.log; exit 1; }
for v in A B B0; do
  if [ $v = B0 ]; then use B; export HF_FLASHMLA_PDL=0; else use $v; fi
  el probe $v; timeout 100 python3 scripts/small_work_probe.py --sms 132 2>&1 | grep -v -i warn
  unset HF_FLASHMLA_PDL
done
for v in A B; do
  el main $v; use $v
  timeout 110 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/main_$v.json > $O/main_$v.log 2>&1; grep -E "geomean|max TFLOP|median SM" $O/main_$v.log
done
python3 scripts/compare_bench.py A=$O/main_A.json B=$O/main_B.json 2>&1 | head -8
use B; el tests B; timeout 170 python3 -m pytest -q -m gpu tests/ -x 2>&1 | tail -3
