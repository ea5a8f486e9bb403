#!/usr/bin/env bash
# Run 20: seesaw variants A/B (HF_FLASHMLA_SEESAW_VARIANT bits: 1 = Q's rope chunk in registers, 2 = no extra V
# waits), racecheck probe incl. pattern 5, racecheck on the split kernel.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run20.tgz" o); }
trap finish EXIT
el build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep error $O/build.log | head; exit 1; }
ok=1
for v in 1 2 3; do
  el smoke variant $v; HF_FLASHMLA_SEESAW_VARIANT=$v timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke_v$v.log 2>&1; grep -E "FAIL|correctness" $O/smoke_v$v.log
  grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_v$v.log || ok=0
done
if [[ $ok == 1 ]]; then
  for r in a b; do for v in 0 1 2 3; do
    el bench v$v $r; HF_FLASHMLA_SEESAW_VARIANT=$v timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_v${v}_$r.json > $O/bench_v${v}_$r.log 2>&1; grep -E "geomean|max TFLOP|incorrect" $O/bench_v${v}_$r.log
  done; done
fi
el probe; timeout 60 bash scripts/racecheck_probe.sh 2>&1 | tee $O/racecheck_probe.log
el racecheck split; HF_FLASHMLA_KERNEL=split PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 150 compute-sanitizer --tool racecheck --print-limit 20 python3 scripts/sanitize_case.py > $O/racecheck_split.log 2>&1; echo rc $?; grep -E "RACECHECK SUMMARY|cases right" $O/racecheck_split.log
