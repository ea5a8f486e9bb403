#!/usr/bin/env bash
# Run 70 (H100), run 69's code (PDL combine): (1) the s2 h128 configs under the default schedule vs the balanced cut
# now that a split costs less, alternated twice; (2) the small-work probe at fewer parts; (3) the debug timeline of
# the uneven, b128 x 1K and b64 L4K h16 workloads (start-up, tail, cost per page and per item).
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run70.tgz" o); }
trap finish EXIT
el build; rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build.log 2>&1 || { echo BUILD FAILED; exit 1; }
for round in 1 2; do for v in default balanced; do
  el sched $v $round
  if [ $v = balanced ]; then export HF_FLASHMLA_SPLIT_COMBINE_PAGES=-1000000000000; fi
  timeout 60 python3 scripts/bench_kernel.py --configs main --only sq2_h128,sq1_h128,sq2_h64 --impls ours --warmup-ms 10 --rep-ms 40 --json $O/sched_${v}_$round.json > $O/sched_${v}_$round.log 2>&1
  unset HF_FLASHMLA_SPLIT_COMBINE_PAGES
done; done
python3 scripts/compare_bench.py D1=$O/sched_default_1.json B1=$O/sched_balanced_1.json D2=$O/sched_default_2.json B2=$O/sched_balanced_2.json --configs 2>&1 | head -40
el probe; timeout 100 python3 scripts/small_work_probe.py --configs uneven_b4_sq4_h16 --sms 132,99,66 2>&1 | grep -v -i warn
el timeline; TIMELINE_DIR=$O timeout 150 bash scripts/seesaw_timeline.sh 4641:45118:1730:1696,4,16 128,1024,1,16 64,4096,1,16 2>&1 | grep -v "^timeline" | grep -v "producer pair"
