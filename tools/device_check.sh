#!/usr/bin/env bash
# The one script for the GPU machine, run from the repo root:   bash tools/device_check.sh
# It builds the extension in place, then runs the stages named in STAGES (default "build smoke tests"); each stage
# runs even if an earlier one failed, and a summary is printed last. Logs and JSON go to $OUT (default
# /tmp/device_check_out). Peer wheels and bundles are carried in .whl/ and .fi/ (benchmarks/README.md).
#   build     HF_FLASHMLA_BUILD_EXT=1 python setup.py build_ext --inplace; ptxas registers / spills  -> build.log
#   smoke     python -m tools.kernel_smoke: the compiled op on edge cases, then a few timings         -> smoke.log
#   tests     pytest -m "gpu or triton_gpu", one process per test file that has GPU tests (FlashMLA's conditions
#             matrix excepted)                                                                     -> gpu_tests.log
#   conditions  tests/test_flashmla_conditions.py, 12,800 GPU cases, in six processes at once (path x dtype),
#             then the large corner cases one process at a time; with `tests` too, beside it  -> conditions.log
#   sanitize  compute-sanitizer memcheck and racecheck on python -m tools.sanitize_case (SANITIZE_CASES: its
#             --cases, e.g. 5,6,7 for the FP8 kernels; default all)                                -> sanitize_*.log
#   generate  hf-flashmla check-generate, the main job, hf-flashmla evaluate (bf16, kernel required) -> generate.log
#   multigpu  python -m tools.multi_gpu_check: device_map, tp_plan (torchrun), 2-GPU decode; CPU + one GPU with
#             a single GPU                                                                           -> multigpu.log
#   schedule  python -m benchmarks.bench_schedule                                                   -> schedule.log
#   bench     python -m benchmarks.bench_kernel $BENCH_ARGS (default --quick)                        -> bench.{log,json}
#   e2e       python -m benchmarks.bench_generate $E2E_ARGS (default: the V2-Lite preset's cases)   -> e2e.{log,json}
#   ncu       Nsight Compute on python -m tools.profile_call $NCU_CONFIG (b64_L4096_sq1_h64_varlen4): ours' and
#             FlashMLA's calls, each kernel replayed alone; NCU_KERNELS (regex, default combine|decode|splitkv) picks
#             the kernels; each one's duration, DRAM / L2 throughput, achieved occupancy, registers  -> ncu.{log,csv}
#   ab        an A/B of this tree's kernel against other revisions': AB_BASE names copies of them, comma-separated (each
#             made with `git archive REV csrc hf_flashmla benchmarks setup.py pyproject.toml | tar -x -C .ab/NAME`,
#             carried as .ab), built in place there, all at once; then AB_ROUNDS (2) rounds of bench_kernel $AB_ARGS,
#             one process per tree and round, alternating (the bases in order, this tree last), and
#             python -m benchmarks.compare_runs over them (labels: the folders' names, then "new"): AB_IMPL (ours;
#             a comma list compares each, e.g. ours,ours_fp8 with both in AB_ARGS' --impls) compared, AB_PEER
#             (flashmla) shown as the drift, e.g. AB_IMPL=ours_fp8 AB_PEER=ours for the FP8 kernels (with `build` and
#             `tests` in STAGES this tree is built and checked first)
#                                                -> ab.log, ab_{NAME,new}_N.json, ab.json (ab_IMPL.json for several)
# Stage time limits: TESTS_TIMEOUT (480 s), CONDITIONS_TIMEOUT (540 s), SANITIZE_TIMEOUT (300 s), STAGE_TIMEOUT (each
# other step's own).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/device_check_out}
mkdir -p "$OUT"
STAGES=${STAGES:-"build smoke tests"}
ROOT=$(pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY=()
note() { SUMMARY+=("$1"); echo "### $1"; }
has_stage() { [[ " $STAGES " == *" $1 "* ]]; }
t0=$(date +%s)

echo "### device_check: stages [$STAGES] OUT=$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv,noheader 2>&1 | head -8
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
nvcc --version 2>&1 | tail -1

# Carried wheels (sgl-flash-mla, ...) go to /tmp/site without their dependencies; the sglang wheel is read in place
# by benchmarks/peers/sglang_triton.py.
shopt -s nullglob
wheels=()
for w in .whl/*.whl; do [[ $(basename "$w") == sglang-* ]] || wheels+=("$w"); done
if (( ${#wheels[@]} )); then
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"; then
    export PYTHONPATH="$PYTHONPATH:/tmp/site"; note "wheels: installed ${wheels[*]} into /tmp/site"
  else
    note "wheels: install FAILED"
  fi
fi

# run_stage NAME LOG LIMIT_S COMMAND...: one step under a time limit (a hang would cost the whole call).
run_stage() {
  local name=$1 log=$2 limit=$3; shift 3
  local s; s=$(date +%s)
  echo "### $name: $*"
  timeout "${STAGE_TIMEOUT:-$limit}" "$@" >> "$log" 2>&1
  local rc=$?
  tail -40 "$log"
  if [[ $rc == 0 ]]; then note "$name: ok ($(( $(date +%s) - s )) s)"; else note "$name: FAILED (rc $rc, $(( $(date +%s) - s )) s)"; fi
}

if has_stage build; then
  s=$(date +%s)
  if HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    note "build: ok ($(( $(date +%s) - s )) s)"
  else
    note "build: FAILED (see build.log)"; grep -E "error|Error" "$OUT/build.log" | head -30
  fi
  grep -E "ptxas info\s*: (Function properties|Used)|spill" "$OUT/build.log" | sed 's/^.*ptxas info\s*: //' | head -40
  grep -qE "[1-9][0-9]* bytes spill (stores|loads)" "$OUT/build.log" && note "build: WARNING register spills"
  python3 -c "import hf_flashmla, torch; print('### backend:', hf_flashmla.backend(torch.device('cuda')))" 2>&1 | tail -3
fi

if has_stage smoke; then
  : > "$OUT/smoke.log"
  run_stage "smoke (tools.kernel_smoke)" "$OUT/smoke.log" 180 python3 -m tools.kernel_smoke
fi

# The conditions matrix: six processes at once (path x dtype) for every case but the corner ones, then the corner
# cases (b 128, s_k 4096: pools up to ~10 GB and a float32 reference beside them) one process at a time: six of them
# at once ran out of the GPU's memory. Its summary line goes to conditions.note, so that it can run in the background
# beside the tests stage.
conditions_part() {  # path dtype selection: one pytest process, its summary and failures appended to the log
  local part="$OUT/conditions_$1_$2_${3// /_}.part" rc
  # COLUMNS: pytest cuts each FAILED summary line to the terminal's width, and these test ids alone are wider than
  # 80: the cause (" - ErrorType: message") would not reach the log.
  COLUMNS=400 timeout "${CONDITIONS_TIMEOUT:-540}" python3 -m pytest -q -m gpu -p no:cacheprovider \
    tests/test_flashmla_conditions.py -k "$1 and $2 and $3" > "$part" 2>&1
  rc=$?
  # A run stopped by the time limit prints no summary: its last progress mark says how far it got.
  echo "   $1 $2 ($3): rc $rc: $(grep -E "[0-9]+ (passed|failed)" "$part" | tail -1)" \
    "$( (( rc == 124 )) && grep -oE "\[ *[0-9]+%\]" "$part" | tail -1)" >> "$OUT/conditions.log"
  grep -E "^FAILED" "$part" | cut -c1-400 | head -10 >> "$OUT/conditions.log"
  rm -f "$part"
}

run_conditions() {
  local s path dtype; s=$(date +%s); : > "$OUT/conditions.log"
  for path in auto triton reference; do
    for dtype in bf16 fp16; do conditions_part "$path" "$dtype" "not corner" & done
  done
  wait
  for path in auto triton; do  # the reference path takes no corner case (b > 6)
    for dtype in bf16 fp16; do conditions_part "$path" "$dtype" "corner"; done
  done
  if grep -qE ": rc [^0]" "$OUT/conditions.log"; then
    echo "conditions: FAILED or incomplete ($(( $(date +%s) - s )) s)" > "$OUT/conditions.note"
  elif ! grep -qE "[0-9]+ passed" "$OUT/conditions.log"; then
    echo "conditions: NOTHING RAN (no GPU case passed or failed: skipped?)" > "$OUT/conditions.note"
  else
    echo "conditions: ok ($(( $(date +%s) - s )) s)" > "$OUT/conditions.note"
  fi
}
finish_conditions() { cat "$OUT/conditions.log"; note "$(cat "$OUT/conditions.note")"; rm -f "$OUT/conditions.note"; }

# With the tests stage too, the matrix runs beside it (the tests' timings are not the point of either).
conditions_pid=
if has_stage conditions && has_stage tests; then
  echo "### conditions: in the background, beside the tests stage"
  run_conditions > /dev/null 2>&1 &
  conditions_pid=$!
fi

if has_stage tests; then
  # One pytest process per test file: a fault that ends a process (or poisons its CUDA context) then names its
  # file, and the files after it still run.
  s=$(date +%s); failed=(); passed=0; : > "$OUT/gpu_tests.log"
  files=${PYTEST_ARGS:-$(grep -lE "mark\.gpu|triton_gpu" tests/test_*.py | grep -v flashmla_conditions)}
  for file in $files; do
    left=$(( ${TESTS_TIMEOUT:-480} - ($(date +%s) - s) ))
    if (( left <= 0 )); then failed+=("$file (no time left)"); continue; fi
    echo "### tests: $file" >> "$OUT/gpu_tests.log"
    timeout "$left" python3 -m pytest -q -m "gpu or triton_gpu" -rs -p no:cacheprovider $file > "$OUT/file.log" 2>&1
    rc=$?
    cat "$OUT/file.log" >> "$OUT/gpu_tests.log"
    line=$(grep -E "[0-9]+ (passed|failed|skipped|deselected|error)" "$OUT/file.log" | tail -1)
    echo "   $file: rc $rc: $line"
    # A process that died (segmentation fault, abort) names no failed test: show where it was (faulthandler's frames).
    if (( rc > 128 )); then grep -E "Fatal Python error|File \"$ROOT" "$OUT/file.log" | head -6 | sed 's/^/      /'; fi
    [[ $line =~ ([0-9]+)\ passed ]] && passed=$(( passed + BASH_REMATCH[1] ))
    # rc 5: every test of the file was deselected (no GPU test in it for this machine)
    [[ $rc == 0 || $rc == 5 ]] || failed+=("$file (rc $rc: $line)")
  done
  if (( ${#failed[@]} )); then note "tests: FAILED: ${failed[*]}"
  elif (( passed == 0 )); then note "tests: NOTHING RAN (kernel not usable?)"
  else note "tests: ok: $passed passed ($(( $(date +%s) - s )) s)"; fi
  rm -f "$OUT/file.log"
fi

if [[ -n $conditions_pid ]]; then
  wait "$conditions_pid"; finish_conditions
elif has_stage conditions; then
  run_conditions; finish_conditions
fi

if has_stage sanitize; then
  if command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in memcheck racecheck; do
      PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "${SANITIZE_TIMEOUT:-300}" compute-sanitizer --tool $tool \
        --print-limit 20 python3 -m tools.sanitize_case ${SANITIZE_CASES:+--cases "$SANITIZE_CASES"} \
        > "$OUT/sanitize_$tool.log" 2>&1
      rc=$?
      grep -E "^case |sanitize_case:|ERROR SUMMARY|RACECHECK SUMMARY|Invalid|Race reported|hazard" "$OUT/sanitize_$tool.log" | head -20
      summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitize_$tool.log" | tail -1)
      # racecheck exits 0 even when it reports hazards: its summary's error count decides.
      if [[ $rc == 0 && $summary =~ \(([1-9][0-9]*)\ errors ]]; then rc=1; fi
      if [[ $rc == 0 ]]; then note "sanitize $tool: ok: $summary"; else note "sanitize $tool: FAILED (rc $rc): ${summary:-see log}"; fi
    done
  else
    note "sanitize: compute-sanitizer not found"
  fi
fi

if has_stage generate; then
  log="$OUT/generate.log"; : > "$log"
  run_stage "check-generate (bf16 flash_mla vs eager)" "$log" 240 python3 -m hf_flashmla check-generate
  run_stage "main job (python -m hf_flashmla)" "$log" 240 python3 -m hf_flashmla
  run_stage "evaluate (DeepSeek-V3 shapes, bf16)" "$log" 240 python3 -m hf_flashmla evaluate --preset deepseek-v3 \
    --dtype bfloat16 --seq-len 2048 --prefill-len 1920 --max-windows 4 --batch-size 2 --random-tokens 8192 \
    --require-kernel --json "$OUT/eval_v3.json"
fi

if has_stage multigpu; then
  log="$OUT/multigpu.log"; : > "$log"
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # multicast stays off here
  if (( $(nvidia-smi -L 2>/dev/null | wc -l) >= 2 )); then
    run_stage "multigpu device_map" "$log" 240 python3 -m tools.multi_gpu_check --json "$OUT/multigpu_device_map.json"
    run_stage "multigpu tp_plan" "$log" 240 torchrun --nproc-per-node 2 -m tools.multi_gpu_check --tp \
      --json "$OUT/multigpu_tp.json"
    run_stage "multigpu bench (16K x 8, 2 GPUs)" "$log" 240 python3 -m tools.multi_gpu_check --bench \
      --json "$OUT/multigpu_bench.json"
  else
    run_stage "multigpu cpu+gpu device_map" "$log" 240 python3 -m tools.multi_gpu_check --devices cpu,cuda:0 \
      --placement hooks --tiny --json "$OUT/multigpu_cpu_gpu.json"
    note "multigpu: 2-GPU runs skipped (fewer than 2 GPUs)"
  fi
fi

if has_stage schedule; then
  : > "$OUT/schedule.log"
  run_stage "schedule bench" "$OUT/schedule.log" 120 python3 -m benchmarks.bench_schedule
fi

if has_stage bench; then
  : > "$OUT/bench.log"
  # shellcheck disable=SC2086
  run_stage "bench_kernel" "$OUT/bench.log" 590 python3 -m benchmarks.bench_kernel ${BENCH_ARGS:---quick} \
    --json "$OUT/bench.json"
fi

if has_stage e2e; then
  : > "$OUT/e2e.log"
  # shellcheck disable=SC2086
  run_stage "bench_generate" "$OUT/e2e.log" 590 python3 -m benchmarks.bench_generate ${E2E_ARGS:-} \
    --json "$OUT/e2e.json"
fi

if has_stage ncu; then
  : > "$OUT/ncu.log"
  metrics=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,launch__grid_size,launch__block_size
  # --launch-count bounds the replays (each profiled kernel is replayed once per metric pass).
  run_stage "ncu (${NCU_CONFIG:-b64_L4096_sq1_h64_varlen4})" "$OUT/ncu.log" 300 ncu --csv --metrics "$metrics" \
    --kernel-name "regex:${NCU_KERNELS:-combine|decode|splitkv}" --launch-count 12 \
    python3 -m tools.profile_call "${NCU_CONFIG:-b64_L4096_sq1_h64_varlen4}" --calls 3
  grep -E '^"[0-9]' "$OUT/ncu.log" > "$OUT/ncu.csv"
  # One line per kernel launch: name (shortened), then each metric's value.
  python3 - "$OUT/ncu.csv" <<'PY' | tee -a "$OUT/ncu.log"
import csv, sys
from benchmarks.kernel_profile import short_name
launches = {}
for row in csv.reader(open(sys.argv[1])):
    if len(row) < 15:
        continue
    key = (row[0], short_name(row[4]))
    launches.setdefault(key, []).append(f"{row[-3].split('__', 1)[-1]}={row[-1]}")
for (launch, name), values in launches.items():
    print(f"   launch {launch} {name}: " + " ".join(values))
PY
fi

if has_stage ab; then
  log="$OUT/ab.log"; : > "$log"
  IFS=, read -r -a ab_dirs <<< "${AB_BASE:-}"
  bad=0
  for d in "${ab_dirs[@]}"; do [[ -f $d/setup.py ]] || bad=1; done
  if (( ${#ab_dirs[@]} == 0 || bad )); then
    note "ab: FAILED: AB_BASE must name trees with setup.py, comma-separated (got '${AB_BASE:-}')"
  else
    # The base trees build at once (each with its share of MAX_JOBS); a tree is labelled by its folder's name.
    s=$(date +%s); jobs=$(( ${MAX_JOBS:-16} / ${#ab_dirs[@]} )); (( jobs > 0 )) || jobs=1
    labels=(); dirs=(); built=1
    for d in "${ab_dirs[@]}"; do
      dir=$(cd "$d" && pwd); labels+=("$(basename "$dir")"); dirs+=("$dir")
      (cd "$dir" && MAX_JOBS=$jobs HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > "$OUT/ab_build_$(basename "$dir").log" 2>&1) &
    done
    for pid in $(jobs -p); do [[ $pid == "${conditions_pid:-}" ]] || wait "$pid" || built=0; done
    for l in "${labels[@]}"; do cat "$OUT/ab_build_$l.log" >> "$log"; rm -f "$OUT/ab_build_$l.log"; done
    if (( built )); then
      note "ab: ${AB_BASE} built ($(( $(date +%s) - s )) s)"
      labels+=(new); dirs+=("$ROOT")
      declare -A runs=()
      for (( r = 1; r <= ${AB_ROUNDS:-2}; r++ )); do
        for i in "${!labels[@]}"; do
          side=${labels[$i]}; dir=${dirs[$i]}
          json="$OUT/ab_${side}_$r.json"
          echo "### ab: $side, round $r" >> "$log"
          # shellcheck disable=SC2086
          (cd "$dir" && PYTHONPATH="$dir:$PYTHONPATH" timeout "${STAGE_TIMEOUT:-590}" python3 -m benchmarks.bench_kernel \
            ${AB_ARGS:---configs main --quick --impls ours,flashmla --repeats 3} --json "$json") >> "$log" 2>&1
          if [[ -f $json ]]; then runs[$side]+="${runs[$side]:+,}$json"; else note "ab: $side round $r FAILED (see ab.log)"; fi
        done
      done
      args=()
      for side in "${labels[@]}"; do [[ -n ${runs[$side]:-} ]] && args+=("$side=${runs[$side]}"); done
      if (( ${#args[@]} > 1 )); then
        # One comparison per implementation named in AB_IMPL (e.g. ours,ours_fp8: both kernels from one set of runs).
        IFS=, read -r -a ab_impls <<< "${AB_IMPL:-ours}"
        for impl in "${ab_impls[@]}"; do
          json="$OUT/ab.json"; (( ${#ab_impls[@]} > 1 )) && json="$OUT/ab_$impl.json"
          compared=$(python3 -m benchmarks.compare_runs "${args[@]}" --impl "$impl" --peer "${AB_PEER:-flashmla}" \
            --json "$json" 2>&1)
          echo "$compared" | tee -a "$log"
          note "ab ($impl): $(echo "$compared" | grep -E "^geomean|^wrong" | tr '\n' ' ')"
        done
      fi
    else
      note "ab: FAILED: a tree of $AB_BASE did not build (see ab.log)"; grep -E "error" "$log" | head -10
    fi
  fi
fi

echo
echo "### device_check summary ($(( $(date +%s) - t0 )) s):"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
