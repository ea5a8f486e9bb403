#!/usr/bin/env bash
# Run 101 (final, H100): run 98's code + the combine's few-splits merge (run 100). Build (FlashInfer's JIT in the
# background), smoke, the full benchmark of ours alone (the FlashMLA comparison without the peers' heat between
# timings), then the full benchmark with every peer incl. FlashInfer, every GPU test, memcheck. Carry [".fi", ".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cp $O/bench.json $O/bench.log $O/bench.png $O/bench_ours.json $O/bench_ours.log "$OUT/" 2>/dev/null; (cd /tmp && tar czf "$OUT/run101.tgz" o); }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; ( timeout 300 python3 scripts/peers/flashinfer_mla.py --build > $O/fi_jit.log 2>&1; echo "jit rc=$?" >> $O/fi_jit.log ) &
rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; grep -E "error" $O/build.log | head; exit 1; }
wait; tail -2 $O/fi_jit.log
grep -E "spill|Used" $O/build.log | sort | uniq -c
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke.log 2>&1; grep -E "FAIL|correctness" $O/smoke.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke.log || { tail -20 $O/smoke.log; exit 1; }
el "bench ours alone"; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 120 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/bench_ours.json > $O/bench_ours.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|median SM" $O/bench_ours.log
el "bench with peers"; nvidia-smi --query-gpu=temperature.gpu --format=csv,noheader
timeout 260 python3 scripts/bench_kernel.py --configs all --impls ours,flashinfer,triton,sglang,torch --warmup-ms 10 --rep-ms 40 --json $O/bench.json --plot $O/bench.png > $O/bench.log 2>&1; echo rc $?; grep -E "geomean|max GB|max TFLOP|incorrect|errors|ours vs|median SM" $O/bench.log
python3 scripts/compare_bench.py run91=notes/device_runs/91_bench.json run98=notes/device_runs/98_bench.json run101_ours=$O/bench_ours.json run101=$O/bench.json 2>&1 | head -6
el tests; timeout 200 python3 -m pytest -q -m gpu tests/ 2>&1 | tail -2
el memcheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 90 compute-sanitizer --tool memcheck python3 scripts/sanitize_case.py > $O/memcheck.log 2>&1; echo rc $?; grep -E "^case |ERROR SUMMARY" $O/memcheck.log
