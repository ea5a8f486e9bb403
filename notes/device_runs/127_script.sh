#!/usr/bin/env bash
# Run 127 (H100): first the owed GPU test of the lazy rescaling's update path (test_running_max_jumps) on HEAD (A);
# then (B) a second Q chunk (latent chunk 3) held in registers next to the rope chunk, Q K^T on it as RS m64n64k16,
# vs (A) HEAD (B with 127_q_regs.patch reversed). Prediction: -8 KB of shared-memory reads per page (run 20's rope
# chunk gave +0.6..1.1% compute-bound), so +0.5..1% compute-bound and a little less energy per page under the 700 W
# cap; ptxas reports 32 bytes of spill in B (checked in the SASS here). Smoke + kernel GPU tests on B; all configs
# A/B twice (ours alone); clock_probe on b128 L8K s2 h128 for A and B (back-to-back us/call at the cap ~ energy).
# Carry nothing.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cd $O && tar czf "$OUT/127_results.tgz" 127_* *.log 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build /tmp/A; cp -r . /tmp/A
(cd /tmp/A && git apply -R notes/device_runs/127_q_regs.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_A.log 2>&1 || echo "BUILD A FAILED") &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_B.log 2>&1 || { echo BUILD B FAILED; grep error $O/build_B.log | head; exit 1; }
wait; grep -E "spill|Used 168|C7520" $O/build_B.log | sort | uniq -c
so=$(ls hf_flashmla/*.so | head -1); cuobjdump -sass $so > $O/B.sass 2>/dev/null
python3 - $O/B.sass <<'PY'
import sys, re
fn = None; counts = {}
for line in open(sys.argv[1]):
    m = re.search(r"Function : (\S+)", line)
    if m: fn = m.group(1); continue
    if fn and "seesaw" in fn:
        for op in ("LDL", "STL", "HGMMA"):
            if re.search(r"\b%s\b" % op, line): counts.setdefault(fn[:60], {}).setdefault(op, 0); counts[fn[:60]][op] += 1
for k, v in counts.items(): print("sass", k, v)
PY
el "max jumps A"; (cd /tmp/A && timeout 90 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py -k running_max_jumps 2>&1 | tail -2)
el smoke B; timeout 60 python3 scripts/kernel_smoke.py --check-only > $O/smoke_B.log 2>&1; grep -E "FAIL|correctness" $O/smoke_B.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_B.log || { tail -20 $O/smoke_B.log; exit 1; }
el kernel tests B; timeout 170 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py 2>&1 | tail -2
for r in 1 2; do for v in A B; do
  el "all $v $r"; d=.; [ $v = A ] && d=/tmp/A
  (cd $d && timeout 110 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --json $O/127_all_${v}_$r.json > $O/all_${v}_$r.log 2>&1); grep -E "geomean" $O/all_${v}_$r.log
done; done
J="A1=$O/127_all_A_1.json B1=$O/127_all_B_1.json A2=$O/127_all_A_2.json B2=$O/127_all_B_2.json"
python3 scripts/compare_bench.py $J 2>&1 | head -8
python3 scripts/compare_bench.py $J --configs 2>&1 | cut -c1-140 > $O/127_compare_configs.log
grep -E "sq2_h128|sq1_h128|uneven" $O/127_compare_configs.log | head -30
for v in A B A B; do d=.; [ $v = A ] && d=/tmp/A; el "clock probe $v"; sleep 3
  (cd $d && timeout 40 python3 scripts/clock_probe.py --configs b128_L8192_sq2_h128 --seconds 3 2>&1 | grep -v -i warn); done
