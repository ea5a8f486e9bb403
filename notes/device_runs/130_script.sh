#!/usr/bin/env bash
# Run 130 (H100, diagnostic, HEAD): how close to the tensor ceiling is the kernel when the clock is low, as under the
# 700 W cap? ncu at its default clock control (locked base clock) and with it off, b128 L8K and L16K s2 h128: duration,
# SM clock, tensor (GMMA) pipe and XU (MUFU: the softmax's exp2) pipe activity. Carry nothing.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
ncu --query-metrics --chip gh100 2>/dev/null | grep -E "^sm__pipe_tensor_op_gmma|^sm__inst_executed_pipe_xu|^sm__pipe_shared_cycles|^sm__pipe_fma_cycles|^sm__inst_executed_pipe_alu |^sm__pipe_alu_cycles" | cut -c1-110
M=gpu__time_duration.sum,sm__cycles_elapsed.avg.per_second,sm__cycles_elapsed.max,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_shared_cycles_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active
for cc in base none; do for cfg in 128,8192,2,128 128,16384,2,128; do
  el "ncu clock-control $cc $cfg"; timeout 100 ncu --clock-control $cc --metrics $M -k regex:seesaw -s 1 -c 1 python3 scripts/kernel_smoke.py --profile-one $cfg 2>&1 | grep -E "^\s+(gpu|sm__|smsp)|ERR|rror" | head -12
done; done
el done
