#!/usr/bin/env bash
# Run 118 (H100): (1) the s_q = 1, h_q = 128 configs (two CTAs per page, the L2 prefetch one pair ahead) with the
# prefetch spread over the part's two CTAs (A, HEAD) vs issued by both (P, 118_prefetch_both.patch), three
# processes each, interleaved: b128 L16K s1 h128 took 900-911 us in some passes and 976-1010 in others (runs
# 113-117), which is run 53's prefetch-off time; (2) b16 x 64K h16 under the default schedule (8 pieces per
# sequence: 128 busy parts) vs the balanced cut (HF_FLASHMLA_SPLIT_COMBINE_PAGES=7 tips the choice), twice; (3) the
# new --rounds 3 over every config, ours alone. Carry nothing.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; cd $O && tar czf "$OUT/118_results.tgz" 118_* 2>/dev/null; }
trap finish EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build /tmp/P; cp -r . /tmp/P
(cd /tmp/P && git apply notes/device_runs/118_prefetch_both.patch && HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_P.log 2>&1 || echo "BUILD P FAILED") &
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_A.log 2>&1 || { echo BUILD A FAILED; exit 1; }
wait; grep -E "spill|Used 168" $O/build_P.log | sort | uniq -c
el smoke P; (cd /tmp/P && timeout 60 python3 scripts/kernel_smoke.py --check-only 2>&1 | grep -E "FAIL|correctness")
B="--configs main --impls ours --warmup-ms 10 --rep-ms 40"
for r in 1 2 3; do for v in A P; do
  el "sq1 h128 $v $r"; d=.; [ $v = P ] && d=/tmp/P
  (cd $d && timeout 60 python3 scripts/bench_kernel.py $B --only sq1_h128 --json $O/118_h128_${v}_$r.json > $O/h128_${v}_$r.log 2>&1)
  python3 - $O/118_h128_${v}_$r.json <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("   " + " ".join(f"{c['name'].replace('_sq1_h128', '')}={r['ms'] * 1e3:.1f}@{r.get('min_sm_mhz')}"
                       for c in d["configs"] for r in c["rows"] if r["variant"] == "ours" and r.get("ms")))
PY
done; done 2>&1 | tee $O/118_h128.log
for r in 1 2; do for v in default balanced; do
  el "b16 64K $v $r"; e=""; [ $v = balanced ] && e="HF_FLASHMLA_SPLIT_COMBINE_PAGES=7"
  env $e timeout 60 python3 scripts/bench_kernel.py --configs extra --only b16_64K,b128_1K --impls ours --warmup-ms 10 --rep-ms 40 2>&1 | grep -E "^   ours|^== "
done; done 2>&1 | tee $O/118_b16_64K.log
el "rounds 3, all configs, ours"
timeout 240 python3 scripts/bench_kernel.py --configs all --impls ours --warmup-ms 10 --rep-ms 40 --rounds 3 --json $O/118_rounds.json > $O/118_rounds.log 2>&1; echo rc $?
grep -E "geomean|max GB|max TFLOP|incorrect|errors|median SM" $O/118_rounds.log
