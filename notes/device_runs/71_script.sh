#!/usr/bin/env bash
# Run 71 (H100): the shared-row combine in quarter rows (a block per 128 columns, C) vs run 69's block per row (B =
# HEAD~1's csrc): small-work probe on both, smoke and the kernel GPU tests on C.
set -u; export PYTHONUNBUFFERED=1; O=/tmp/o; mkdir -p $O; t0=$(date +%s)
el() { echo "### t=$(( $(date +%s) - t0 )) s: $*"; }
finish() { el done; (cd /tmp && tar czf "$OUT/run71.tgz" o); }
trap finish EXIT
build() { rm -rf build; HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > $O/build_$1.log 2>&1 || { echo BUILD $1 FAILED; grep -E "error" $O/build_$1.log | head; exit 1; }; cp hf_flashmla/_C*.so /tmp/$1.so; }
use() { cp /tmp/$1.so hf_flashmla/$(basename hf_flashmla/_C*.so); }
el build C; build C
for f in csrc/*; do git show HEAD~1:$f > $f 2>/dev/null; done; el build B; build B; git checkout -- csrc
use C; el smoke C; timeout 90 python3 scripts/kernel_smoke.py --check-only > $O/smoke_C.log 2>&1; grep -E "FAIL|correctness" $O/smoke_C.log
grep -q "correctness: \([0-9]*\)/\1 ok" $O/smoke_C.log || { tail -20 $O/smoke_C.log; exit 1; }
for v in B C B C; do use $v; el probe $v; HF_FLASHMLA_PDL=0 timeout 60 python3 scripts/small_work_probe.py --configs uneven_b4_sq4_h16 --sms 132 2>&1 | grep -v -i warn; timeout 60 python3 scripts/small_work_probe.py --configs uneven_b4_sq4_h16 --sms 132,66 2>&1 | grep -v -i warn; done
use C; el tests C; timeout 150 python3 -m pytest -q -m gpu tests/test_kernel_gpu.py -x 2>&1 | tail -3
