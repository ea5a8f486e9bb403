#!/usr/bin/env bash
# Run 50: split cost 8 vs 16 on the configs where it changes the schedule (16 snaps them to whole sequences),
# interleaved three times (do_bench, L2 flushed, as the main table).
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O
finish() { (cd /tmp && tar czf "$OUT/run50.tgz" o); }
trap finish EXIT
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
ONLY=b64_L16384_sq2_h128_equal,b128_L8192_sq2_h128_equal,b128_L16384_sq1_h128_equal,b128_L16384_sq2_h64_equal
for r in 1 2 3; do
  for c in 8 16; do
    HF_FLASHMLA_SPLIT_COMBINE_PAGES=$c timeout 60 python3 scripts/bench_kernel.py --configs main --only $ONLY --impls ours --warmup-ms 10 --rep-ms 40 --json $O/c${c}_$r.json > $O/c${c}_$r.log 2>&1
  done
done
python3 scripts/compare_bench.py c8_1=$O/c8_1.json c16_1=$O/c16_1.json c8_2=$O/c8_2.json c16_2=$O/c16_2.json c8_3=$O/c8_3.json c16_3=$O/c16_3.json --configs 2>&1 | tail -6
