#!/usr/bin/env bash
# The one script to run on the GPU machine, from the repo root:   bash scripts/gpu_check.sh
#   (device call: carry [".whl", ".fi"] for the SGLang wheel and the FlashInfer bundle, scripts/peers/; results in $OUT)
# A device command may run 600 s at most: all four stages may not fit in one call; split them, e.g.
#   STAGES="build tests" bash scripts/gpu_check.sh   then   STAGES="build sanitize bench" ...
# (build is needed in every fresh machine: the extension is built in place.)
# Stages, chosen by STAGES (default "build tests sanitize bench"); each runs even if an earlier one failed:
#   build     HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace  -> $OUT/build.log (+ ptxas summary)
#   tests     python3 -m pytest -q -m "gpu or triton_gpu" tests/ (every GPU test: kernel, schedule kernel,
#             Triton path, integration)                                     -> $OUT/gpu_tests.log ($PYTEST_ARGS)
#   schedule  scripts/bench_schedule.py (PyTorch schedule vs the schedule kernel) -> $OUT/schedule.log
#   generate  scripts/gpu_generate_check.py, the main job (python3 -m hf_flashmla), scripts/evaluate.py
#             (bf16 flash_mla vs eager, kernel required)                    -> $OUT/generate.log
#   multigpu  scripts/multi_gpu_check.py (device_map over 2 GPUs, tp_plan via torchrun, 2-GPU decode row; CPU +
#             one GPU where only one GPU)                              -> $OUT/multigpu.log, multigpu_*.json
#   e2e       scripts/bench_generate.py $E2E_ARGS                           -> $OUT/e2e.{log,json} + plots
#   sanitize  compute-sanitizer memcheck + racecheck on scripts/sanitize_case.py -> $OUT/sanitize_*.log
#             (each under timeout $SANITIZE_TIMEOUT, default 300 s)
#   bench     python3 scripts/bench_kernel.py $BENCH_ARGS (default --quick)   -> $OUT/bench.{log,json,png}
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
STAGES=${STAGES:-"build tests sanitize bench"}
BENCH_ARGS=${BENCH_ARGS:---quick}
PYTEST_ARGS=${PYTEST_ARGS:-}
ROOT=$(pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY=()
note() { SUMMARY+=("$1"); echo "### $1"; }
has_stage() { [[ " $STAGES " == *" $1 "* ]]; }
t0=$(date +%s)

echo "### gpu_check: stages [$STAGES] OUT=$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader 2>&1 | head -4
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
nvcc --version 2>&1 | tail -1

# Carried wheels (other than sglang's, which scripts/peers/sglang_triton.py reads straight from the wheel).
shopt -s nullglob
wheels=()
for w in .whl/*.whl; do [[ $(basename "$w") == sglang-* ]] || wheels+=("$w"); done
if (( ${#wheels[@]} )); then
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"; then
    export PYTHONPATH="/tmp/site:$PYTHONPATH"; note "wheels: installed ${#wheels[@]} into /tmp/site"
  else
    note "wheels: install FAILED"
  fi
fi
# An array, not `ls` of the glob: under nullglob an unmatched glob vanishes and `ls` would list the repo root.
sglang_wheels=(.whl/sglang-*.whl)
if (( ${#sglang_wheels[@]} )); then echo "### sglang wheel: ${sglang_wheels[0]}"
else echo "### no sglang wheel in .whl (the sglang peer will report unavailable)"; fi

if has_stage build; then
  s=$(date +%s)
  echo "### build: HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace"
  if HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    note "build: ok ($(( $(date +%s) - s )) s)"
  else
    note "build: FAILED (rc $?, see build.log)"; grep -E "error|Error" "$OUT/build.log" | head -30
  fi
  echo "### ptxas resource usage (registers / smem / spills):"
  grep -E "ptxas info\s*: (Compiling|Function properties|Used)|bytes stack frame|spill" "$OUT/build.log" \
    | sed 's/^.*ptxas info\s*: //' | head -60
  grep -qE "[1-9][0-9]* bytes spill (stores|loads)" "$OUT/build.log" && note "build: WARNING register spills (see ptxas lines)"
  python3 -c "import hf_flashmla, torch; print('### backend:', hf_flashmla.backend(torch.device('cuda')))" 2>&1 | tail -3
fi

if has_stage tests; then
  s=$(date +%s)
  timeout "${TESTS_TIMEOUT:-360}" python3 -m pytest -q -m "gpu or triton_gpu" -rs ${PYTEST_ARGS:-tests/} 2>&1 | tee "$OUT/gpu_tests.log" | tail -60
  rc=${PIPESTATUS[0]}
  line=$(grep -E "[0-9]+ (passed|failed|skipped|error)" "$OUT/gpu_tests.log" | tail -1)
  if [[ $rc == 0 && $line != *passed* ]]; then note "tests: NOTHING RAN (kernel not usable?): $line"
  elif [[ $rc == 0 ]]; then note "tests: ok: $line ($(( $(date +%s) - s )) s)"; else note "tests: FAILED (rc $rc): $line"; fi
fi

if has_stage sanitize; then
  if command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in memcheck racecheck; do
      s=$(date +%s)
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${SANITIZE_TIMEOUT:-300}" compute-sanitizer --tool $tool --print-limit 20 \
        python3 scripts/sanitize_case.py > "$OUT/sanitize_$tool.log" 2>&1
      rc=$?
      echo "### sanitize $tool (rc $rc, $(( $(date +%s) - s )) s):"
      grep -E "^case |sanitize_case:|ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Race reported|hazard" "$OUT/sanitize_$tool.log" | head -30
      summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitize_$tool.log" | tail -1)
      # racecheck exits 0 even when it reports hazards: its summary's error count decides.
      if [[ $rc == 0 && $summary =~ \(([1-9][0-9]*)\ errors ]]; then rc=1; fi
      if [[ $rc == 0 ]]; then note "sanitize $tool: ok: $summary"; else note "sanitize $tool: FAILED (rc $rc): ${summary:-see sanitize_$tool.log}"; tail -5 "$OUT/sanitize_$tool.log"; fi
    done
  else
    note "sanitize: compute-sanitizer not found"
  fi
fi

if has_stage bench; then
  s=$(date +%s)
  # shellcheck disable=SC2086
  python3 scripts/bench_kernel.py $BENCH_ARGS --json "$OUT/bench.json" --plot "$OUT/bench.png" 2>&1 | tee "$OUT/bench.log"
  rc=${PIPESTATUS[0]}
  if [[ $rc == 0 ]]; then note "bench: ok ($(( $(date +%s) - s )) s)"; else note "bench: FAILED (rc $rc)"; fi
  while IFS= read -r l; do SUMMARY+=("bench: $l"); done < <(grep -E "geomean speed ratio|max GB/s|max TFLOP/s|ours vs |incorrect results|errors:" "$OUT/bench.log" | sed 's/^ *//')
fi

# run_stage NAME LOGFILE TIMEOUT_S COMMAND...: runs one step under a timeout (a hang costs the whole call otherwise).
run_stage() {
  local name=$1 log=$2 limit=$3; shift 3
  local s; s=$(date +%s)
  echo "### $name: $*"
  timeout "${STAGE_TIMEOUT:-$limit}" "$@" >> "$log" 2>&1
  local rc=$?
  tail -40 "$log"
  if [[ $rc == 0 ]]; then note "$name: ok ($(( $(date +%s) - s )) s)"; else note "$name: FAILED (rc $rc, $(( $(date +%s) - s )) s)"; fi
}

if has_stage schedule; then
  run_stage "schedule bench" "$OUT/schedule.log" 120 python3 scripts/bench_schedule.py
fi

if has_stage generate; then
  log="$OUT/generate.log"; : > "$log"
  run_stage "generate check (bf16 flash_mla vs eager)" "$log" 240 python3 scripts/gpu_generate_check.py
  run_stage "main job (python3 -m hf_flashmla)" "$log" 240 python3 -m hf_flashmla
  run_stage "evaluate (DeepSeek-V3 shapes, bf16)" "$log" 240 python3 scripts/evaluate.py --preset deepseek-v3 \
    --dtype bfloat16 --seq-len 2048 --prefill-len 1920 --max-windows 4 --batch-size 2 --random-tokens 8192 \
    --require-kernel --json "$OUT/eval_v3.json"
fi

if has_stage multigpu; then
  log="$OUT/multigpu.log"; : > "$log"
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # the host requires multicast off
  if (( $(nvidia-smi -L 2>/dev/null | wc -l) >= 2 )); then
    run_stage "multigpu device_map" "$log" 240 python3 scripts/multi_gpu_check.py --json "$OUT/multigpu_device_map.json"
    run_stage "multigpu tp_plan" "$log" 240 torchrun --nproc-per-node 2 scripts/multi_gpu_check.py --tp \
      --json "$OUT/multigpu_tp.json"
    run_stage "multigpu bench (16K x 8, 2 GPUs)" "$log" 240 python3 scripts/multi_gpu_check.py --bench \
      --json "$OUT/multigpu_bench.json"
  else  # one GPU: layers on the CPU and on the GPU in one model
    run_stage "multigpu cpu+gpu device_map" "$log" 240 python3 scripts/multi_gpu_check.py --devices cpu,cuda:0 \
      --placement hooks --tiny --json "$OUT/multigpu_cpu_gpu.json"
    note "multigpu: 2-GPU runs skipped (fewer than 2 GPUs)"
  fi
fi

if has_stage e2e; then
  run_stage "e2e bench_generate" "$OUT/e2e.log" "${E2E_TIMEOUT:-480}" python3 scripts/bench_generate.py \
    ${E2E_ARGS:---time-budget-s 360} --json "$OUT/e2e.json" --plot-prefix "$OUT/e2e"
fi

echo
echo "### gpu_check summary ($(( $(date +%s) - t0 )) s):"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
