#!/usr/bin/env bash
# Run 96 (H100): FlashInfer's sm90 MLA paged decode ("fa3" backend of flashinfer.mla.BatchMLAPagedAttentionWrapper)
# as a bench peer, from the trimmed bundle in .fi (scripts/peers/make_flashinfer_bundle.sh). Call with carry
# [".fi", ".whl"] and timeout_s 600. Stages: environment; FlashInfer's JIT compile of its MLA module (in the background,
# at most 330 s) while our extension builds; then bench_kernel.py on three configs, ours vs flashinfer (two variants:
# wrapper.run and the compiled module called directly), each checked against the reference. About 2 to 4 minutes
# (the JIT took 13 s on 2 CPU cores with nvcc 13.0.88 from PyPI, no GPU).
set -u -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp}
t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }

main() {
  el "environment"
  python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, \
torch.cuda.get_device_name(), 'dlpack C API:', hasattr(torch.Tensor, '__dlpack_c_exchange_api__') \
or hasattr(torch.Tensor, '__c_dlpack_exchange_api__'))"
  nvcc --version | tail -2
  echo "ninja $(ninja --version 2>&1) at $(command -v ninja); c++ $(c++ -dumpversion); nproc $(nproc)"
  ls -la .fi

  el "FlashInfer JIT prebuild (background, timeout 330 s) + our extension build"
  ( timeout 330 python3 scripts/peers/flashinfer_mla.py --build > /tmp/fi_jit.log 2>&1
    echo "jit rc=$?" >> /tmp/fi_jit.log ) &
  jit_pid=$!
  rm -rf build
  if HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/b.log 2>&1; then
    el "our extension built"
  else
    tail -30 /tmp/b.log; el "OUR BUILD FAILED"
  fi
  wait "$jit_pid"
  el "JIT stage finished"
  tail -60 /tmp/fi_jit.log
  jit_log=$(ls /tmp/flashinfer_peer/.cache/flashinfer/*/*/flashinfer_jit.log 2>/dev/null | head -1)
  [ -n "$jit_log" ] && { echo "--- $jit_log"; tail -20 "$jit_log"; }
  ls -la /tmp/flashinfer_peer/.cache/flashinfer/*/*/cached_ops/*/ 2>/dev/null | head -20
  if ! grep -q "jit rc=0" /tmp/fi_jit.log; then
    el "FlashInfer JIT failed or timed out: no bench"
    return 1
  fi

  el "bench: ours vs flashinfer"
  timeout 150 python3 scripts/bench_kernel.py --configs main \
    --only b64_L4096_sq1_h16_equal,b64_L4096_sq2_h128_varlen,b128_L16384_sq1_h64_equal \
    --impls ours,flashinfer --warmup-ms 10 --rep-ms 40 --verbose --json "$OUT/96_flashinfer.json"
  local rc=$?
  el "smoke bench rc=$rc"
  [ $rc -eq 0 ] || return $rc
  # Then every config of the table and the extras, ours vs flashinfer, in what is left of the call.
  left=$(( 560 - ($(date +%s) - t0) ))
  el "bench all configs: ours vs flashinfer (timeout ${left} s)"
  timeout "$left" python3 scripts/bench_kernel.py --configs all --impls ours,flashinfer --warmup-ms 10 \
    --rep-ms 40 --json "$OUT/96_bench_all.json" > "$OUT/96_bench_all.log" 2>&1
  rc=$?
  tail -60 "$OUT/96_bench_all.log"
  el "done (bench all rc=$rc)"
  return $rc
}

main 2>&1 | tee "$OUT/96_flashinfer.log"
