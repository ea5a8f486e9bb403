#!/usr/bin/env bash
# Run 122 (H100): b128 L8K s2 h128 (the one table config whose schedule is the snapped one by a tie: largest part 532
# = payload 516 + 16) under the default (snapped: 4 sequences, 512 page-tiles per CTA, no split) vs the balanced
# cut (HF_FLASHMLA_SPLIT_COMBINE_PAGES=15: ~500 page-tiles, 31-32 split sequences; since run 113 their partials are
# bf16). No other config of the tables changes with 15 (checked on CPU). Run 50 (fp32 partials) had snapped 1-3%
# ahead; this session the snapped config moved 853-910 us between calls while b128 L16K s2 h128, balanced, held
# 1668-1692. Six interleaved processes each; b128 L4K s2 h128 and the varlen configs are controls. Carry nothing.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
trap 'el done; cp $O/122_* "$OUT/" 2>/dev/null' EXIT
nvidia-smi --query-gpu=name,temperature.gpu,clocks.max.sm,power.limit --format=csv,noheader
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
for r in 1 2 3 4 5 6; do for v in snapped balanced; do
  e=""; [ $v = balanced ] && e="HF_FLASHMLA_SPLIT_COMBINE_PAGES=15"
  env $e timeout 60 python3 scripts/bench_kernel.py --configs main --only b128_L8192_sq2_h128,b128_L4096_sq2_h128 --impls ours --warmup-ms 10 --rep-ms 40 --json $O/p.json > /dev/null 2>&1
  python3 - $O/p.json $v $r <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:9} {sys.argv[3]} " + " ".join(
    f"{c['name'].replace('_sq2_h128', '')}={r['ms'] * 1e3:.1f}@{r.get('min_sm_mhz')}/{r.get('max_temp_c')}C"
    for c in d["configs"] for r in c["rows"] if r["variant"] == "ours" and r.get("ms")))
PY
done; done 2>&1 | tee $O/122_output.log
