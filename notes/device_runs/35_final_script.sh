#!/usr/bin/env bash
# Run 35 (final): run 33's kernel with the combine kernel's second shape used only where sequences are split many
# ways (parts >= 8 * batch; run 34). Smoke, the full benchmark with peers (README tables), the kernel GPU tests.
# Carry [".whl"] (SGLang's wheel for its peer).
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run35.tgz" o); }
trap finish EXIT
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep error $O/build.log | head; exit 1; }
grep -E "spill|Used" $O/build.log | sort | uniq -c
el smoke; timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || exit 1
el bench; timeout 260 python3 scripts/bench_kernel.py --configs all --impls ours,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/bench.json --plot $O/bench.png > $O/bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs" $O/bench.log
el tests; timeout 150 python3 -m pytest -q -m gpu tests/ > $O/gpu_tests.log 2>&1; tail -1 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
