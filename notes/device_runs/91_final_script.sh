#!/usr/bin/env bash
# Run 91 (final, H100): spare parts' CTAs leave at once (B, `91_spare_exit.patch`) vs not (A: the patch reversed, in a
# copy of the tree built next to B). Build both, smoke, the full benchmark with peers, every GPU test and memcheck on
# B; small_work_probe A/B/A/B on small batches (the combine's early blocks need the spare parts' SMs). Carry [".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run91.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build /tmp/A; cp -r . /tmp/A; (cd /tmp/A && git apply -R notes/device_runs/91_spare_exit.patch && rm -rf build && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_a.log 2>&1) &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
wait; grep -q "error" $O/build_a.log && echo "BUILD A FAILED"
grep -E "spill|Used" $O/build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -20 $O/smoke.log; exit 1; }
el bench; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 220 python3 scripts/bench_kernel.py --configs all --impls ours,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/bench.json --plot $O/bench.png > $O/bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs|median SM" $O/bench.log
python3 scripts/compare_bench.py run80=notes/device_runs/80_bench.json run85=notes/device_runs/85_bench.json run88=notes/device_runs/88_bench.json run91=$O/bench.json 2>&1 | head -6
el tests; timeout 200 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -2
C=b1_L1024_sq1_h16,b1_L4096_sq1_h16,b1_L16384_sq1_h16,b2_L2048_sq1_h16,b1_L1024_sq1_h128,b1_L4096_sq1_h128,b1_L16384_sq1_h128,b4_L2048_sq1_h64,uneven_b4_sq4_h16,b128_1K_sq1_h16,b16_sq16_1K_h16
for round in 1 2; do
  el "A (spare parts stay), round $round"; (cd /tmp/A && timeout 60 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100)
  el "B (spare parts leave), round $round"; timeout 60 python3 scripts/small_work_probe.py --sms 132 --configs $C 2>&1 | grep -v -i warn | cut -c1-100
done
el memcheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 90 compute-sanitizer --tool memcheck python3 scripts/sanitize_case.py > $O/memcheck.log 2>&1; echo rc $?; grep -E "^case |ERROR SUMMARY" $O/memcheck.log
