#!/usr/bin/env bash
# Run 79 (final, H100): the session's code. First an A/B of its last change (B: the producer reads an item's first
# pair of page ids next to the item's length; A = B with 79_first_page_ids.patch reversed) on the extra workloads and
# two small main configs, three rounds; then on B: smoke, every GPU test, memcheck, and the full benchmark with peers
# (README tables). Carry [".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run79.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
build() { rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build B; build B; grep -E "spill|Used" $O/build_B.log | sort | uniq -c
patch -R -p1 < notes/device_runs/79_first_page_ids.patch > /dev/null || { echo PATCH FAILED; exit 1; }
el build A; build A; patch -p1 < notes/device_runs/79_first_page_ids.patch > /dev/null
use B; el smoke B; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -20 $O/smoke.log; exit 1; }
for r in 1 2 3; do for v in A B; do
  use $v; timeout 60 python3 scripts/bench_kernel.py --configs all --only uneven,1K,64K,b64_L4096_sq1_h16_equal,b64_L4096_sq2_h128_equal --impls ours --warmup-ms 10 --rep-ms 40 --json $O/small_${v}_$r.json > $O/small_${v}_$r.log 2>&1
done; done
python3 scripts/compare_bench.py A1=$O/small_A_1.json B1=$O/small_B_1.json A2=$O/small_A_2.json B2=$O/small_B_2.json A3=$O/small_A_3.json B3=$O/small_B_3.json --configs 2>&1 | grep -v "^run\|^A\|^B" | cut -c1-130
use B
el tests; timeout 150 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -2
el memcheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 90 compute-sanitizer --tool memcheck python3 scripts/sanitize_case.py > $O/memcheck.log 2>&1; echo rc $?; grep -E "^case |ERROR SUMMARY" $O/memcheck.log
el bench; timeout 220 python3 scripts/bench_kernel.py --configs all --impls ours,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/bench.json --plot $O/bench.png > $O/bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs|median SM" $O/bench.log
python3 scripts/compare_bench.py run72=notes/device_runs/72_bench.json run79=$O/bench.json 2>&1 | head -4
