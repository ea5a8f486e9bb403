#!/usr/bin/env bash
# Run 16: seesaw kernel (default) through every GPU test, compute-sanitizer memcheck, A/B of two launch options
# (PDL for the combine kernel, L2 evict-first on KV loads), and a per-kernel time breakdown.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run16.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
el build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head -30; exit 1; }
el smoke; timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
HF_FLASHMLA_PDL=1 HF_FLASHMLA_KV_EVICT_FIRST=1 timeout 100 python3 scripts/kernel_smoke.py --check-only > $O/smoke_pdl_evict.log 2>&1; grep -E "FAIL|correctness" $O/smoke_pdl_evict.log
for v in base pdl evict both; do
  case $v in base) e="";; pdl) e="HF_FLASHMLA_PDL=1";; evict) e="HF_FLASHMLA_KV_EVICT_FIRST=1";; both) e="HF_FLASHMLA_PDL=1 HF_FLASHMLA_KV_EVICT_FIRST=1";; esac
  el bench $v; env $e timeout 100 python3 scripts/bench_kernel.py --configs main --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_$v.json > $O/bench_$v.log 2>&1; grep -E "geomean|max GB|max TFLOP|incorrect|errors" $O/bench_$v.log
done
el breakdown; for e in "" "HF_FLASHMLA_PDL=1"; do echo "[$e]"; env $e timeout 60 python3 scripts/kernel_breakdown.py 2>&1 | tail -6; done | tee $O/breakdown.log
el gpu tests; timeout 240 python3 -m pytest -q -m gpu tests/ > $O/gpu_tests.log 2>&1; tail -3 $O/gpu_tests.log; grep -E "^FAILED|^ERROR" $O/gpu_tests.log | head
el memcheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 150 compute-sanitizer --tool memcheck --print-limit 20 python3 scripts/sanitize_case.py > $O/sanitize_memcheck.log 2>&1; echo rc $?; grep -E "ERROR SUMMARY|Invalid" $O/sanitize_memcheck.log | head -5
