#!/usr/bin/env bash
# Run 111 (final, H100): run 109 B' (two-sided hand-overs; racecheck clean in runs 108-110). Build (FlashInfer's JIT in the
# background), smoke, the full benchmark of ours alone (the FlashMLA comparison without the peers' heat between
# timings), then the full benchmark with every peer incl. FlashInfer (GPU tests, memcheck and racecheck: run 110). Carry [".fi", ".whl"].
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cp $O/bench.json $O/bench.log $O/bench.png $O/bench_ours.json $O/bench_ours.log "$OUT/" 2>/dev/null; (cd /tmp && tar czf "$OUT/run111.tgz" o); }
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
python3 scripts/compare_bench.py run91=notes/device_runs/91_bench.json run101=notes/device_runs/101_bench.json run111_ours=$O/bench_ours.json run111=$O/bench.json 2>&1 | head -6
