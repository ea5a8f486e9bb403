#!/usr/bin/env bash
# Run 135 (H100): (F) producer 24 registers, consumers 232 (run 134's F, now the working tree) vs (A) HEAD's 40 / 232
# (F with 135_producer24.patch reversed): cycles at locked base clock, A F A F, to confirm run 134's -0.8%; then on F:
# smoke, every GPU test, memcheck and racecheck on every sanitize case, gpu_check.sh's generate stage.
# Carry [".whl"] (the generate stage's evaluate uses no peer; the wheel is there for gpu_check's preamble).
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cd $O && tar czf "$OUT/135_results.tgz" 135_* 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build /tmp/A; cp -r . /tmp/A
(cd /tmp/A && git apply -R notes/device_runs/135_producer24.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/135_build_A.log 2>&1 || echo "BUILD A FAILED") &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/135_build.log 2>&1 || { echo BUILD FAILED; grep error $O/135_build.log | head; exit 1; }
wait; grep -c "setmaxnreg_dec<40>" /tmp/A/csrc/mla_decode_common.cuh csrc/mla_decode_common.cuh
for f in $O/135_build_A.log $O/135_build.log; do echo "$f: $(grep -E 'spill' $f | sort | uniq -c | tr '\n' ' ')"; done
ls /tmp/A/hf_flashmla/*.so hf_flashmla/*.so
for cfg in 128,8192,2,128 128,8192,1,128; do for v in A F A F; do
  d=.; [ $v = A ] && d=/tmp/A
  echo "ncu $v $cfg: $(cd $d && timeout 60 ncu --clock-control base --metrics gpu__time_duration.sum,sm__cycles_elapsed.max -k regex:seesaw -s 1 -c 1 python3 scripts/kernel_smoke.py --profile-one $cfg 2>&1 | grep -E '^\s+(gpu|sm__)' | awk '{print $1, $(NF)}' | tr '\n' ' ')"
done; done
el smoke; timeout 60 python3 scripts/kernel_smoke.py --check-only 2>&1 | grep -E "FAIL|correctness"
el tests; timeout 200 python3 -m pytest -q -m gpu tests/ > $O/135_gpu_tests.log 2>&1; tail -2 $O/135_gpu_tests.log; grep -E "^FAILED" $O/135_gpu_tests.log | head
el memcheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 60 compute-sanitizer --tool memcheck python3 scripts/sanitize_case.py > $O/135_memcheck.log 2>&1; echo rc $?; grep -E "ERROR SUMMARY|cases right" $O/135_memcheck.log
el racecheck; PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 130 compute-sanitizer --tool racecheck --print-limit 40 python3 scripts/sanitize_case.py > $O/135_racecheck.log 2>&1; echo rc $?; grep -E "RACECHECK SUMMARY|cases right" $O/135_racecheck.log
el generate; OUT=$O/gen STAGES="generate" STAGE_TIMEOUT=150 timeout 170 bash scripts/gpu_check.sh > $O/135_generate_stage.log 2>&1; echo rc $?
grep -E "^### |PASS|FAIL|identical|error" $O/135_generate_stage.log | head -20
