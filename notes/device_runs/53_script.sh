#!/usr/bin/env bash
# Run 53 (H100): L2 prefetch of the pages HF_FLASHMLA_PREFETCH_PAIRS pairs ahead (one whole-page bulk prefetch,
# pairs spread over the part's m-block CTAs) vs none: builds P0 (= the current kernel, cubin identical), P1, P2;
# smoke each; then a subset of the main table (compute-bound, middle and memory-bound configs) P0 P1 P2 three
# times in turn, with the SM clock and power of each timing (scripts/gpu_monitor.py).
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run53.tgz" o); }
trap finish EXIT
build() { rm -rf build; HF_FLASHMLA_NVCC_FLAGS="-DHF_FLASHMLA_PREFETCH_PAIRS=$2" HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; md5sum /tmp/$1.so | cut -c1-12; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
for v in 0 1 2; do el build P$v; build P$v $v; done
grep -E "spill|Used 168" $O/build_P2.log | sort | uniq -c
for v in 1 2; do use P$v; el smoke P$v; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke_P$v.log 2>&1; grep -E "FAIL|correctness" $O/smoke_P$v.log; done
S=b64_L4096_sq1_h16_equal,b64_L16384_sq1_h16_equal,b128_L16384_sq1_h16_equal,b128_L8192_sq1_h64_equal,b128_L4096_sq1_h128_equal,b64_L4096_sq2_h128_equal,b64_L8192_sq1_h128_equal,b64_L8192_sq2_h128_equal,b128_L8192_sq2_h128_equal,b128_L16384_sq1_h128_equal,b128_L16384_sq2_h128_equal,b128_L16384_sq2_h128_varlen
for round in 1 2 3; do for v in 0 1 2; do
  use P$v; el bench P${v}_$round
  timeout 60 python3 scripts/bench_kernel.py --configs main --only $S --impls ours --warmup-ms 10 --rep-ms 40 --json $O/ab_P${v}_$round.json > $O/ab_P${v}_$round.log 2>&1
  grep -E "^   ours " $O/ab_P${v}_$round.log | tr -s ' ' | cut -d' ' -f3,6,9 | tr '\n' '|'; echo
done; done
