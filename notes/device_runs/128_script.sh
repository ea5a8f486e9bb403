#!/usr/bin/env bash
# Run 128 (H100, diagnostic, HEAD): where the bytes of the compute-bound configs go. At s2 h128 four m-block CTAs read
# every page (at s1 h128 two); if they drift apart, a page is fetched from HBM more than once and the power cap
# pays for it. ncu per config: DRAM bytes read against the ideal (KV once: 1.279 GB at b128 L8K), L2 read sectors
# and their hit rate, instructions, shared-memory bank conflicts, duration and clock (ncu's clock control off).
# Carry nothing.
set -u; export PYTHONUNBUFFERED=1; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
M=dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_op_read.sum,lts__t_sector_op_read_hit_rate.pct,lts__t_sectors_srcunit_tex_op_read.sum,gpu__time_duration.sum,sm__cycles_elapsed.avg.per_second,smsp__inst_executed.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,smsp__inst_executed_pipe_tensor_op_gmma.sum
for cfg in 128,8192,2,128 128,16384,2,128 128,16384,1,128 128,16384,1,16; do
  el "ncu $cfg"; timeout 100 ncu --clock-control none --metrics $M -k regex:seesaw -s 1 -c 1 python3 scripts/kernel_smoke.py --profile-one $cfg 2>&1 | grep -E "^\s+(dram|lts|gpu|sm__|smsp|l1tex)|ERR|rror" | head -20
done
el done
