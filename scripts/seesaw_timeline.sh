#!/usr/bin/env bash
# Device only: rebuilds the extension with the seesaw kernel's debug timeline (-DHF_FLASHMLA_TIMELINE), prints the
# SM clock at seven points of eight pairs of CTA (0, 0) (from its TRACE_FROM-th, default 8, counted across its items)
# for each config given as b,L,s_q,h_q, then rebuilds the normal extension. Points, per warpgroup:
#   WG0: 0 pair start, 1 S_A done, 2 m_A/P_A published, 3 P_A V_A,L issued, 4 m_B/P_B received, 5 P_A V_A,L done, 6 P_B V_B,L done
#   WG1: 0 pair start, 1 S_B done, 2 m_A/P_A received, 3 P_A V_A,R issued, 4 m_B/P_B published, 5 P_A V_A,R done, 6 P_B V_B,R done
# and, summarised by scripts/seesaw_timeline_summary.py: every CTA's start/end (spread, tail, cost per page and
# per item) and the item boundaries of CTA (0, 0).
set -u
HF_FLASHMLA_NVCC_FLAGS="-DHF_FLASHMLA_TIMELINE${TRACE_FROM:+ -DHF_FLASHMLA_TRACE_FROM=$TRACE_FROM}" HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/timeline_build.log 2>&1 \
  || { echo "timeline build failed"; grep -E "error|Error" /tmp/timeline_build.log | grep -v "^  File" | head -20; exit 1; }
grep -q "HF_FLASHMLA_TIMELINE" /tmp/timeline_build.log || echo "warning: the build log does not show the timeline flag (nothing recompiled?)"
for config in "${@:-128,16384,2,128}"; do
  echo "== $config"
  python3 scripts/kernel_smoke.py --profile-one "$config" > /tmp/timeline_run.log 2>&1 || tail -5 /tmp/timeline_run.log
  grep -E "^(timeline|producer)" /tmp/timeline_run.log | sort -u
  python3 scripts/seesaw_timeline_summary.py /tmp/timeline_run.log
  [[ -n "${TIMELINE_DIR:-}" ]] && cp /tmp/timeline_run.log "$TIMELINE_DIR/timeline_${config//,/_}.log"
done
HF_FLASHMLA_BUILD_EXT=1 python3 setup.py build_ext --inplace > /tmp/timeline_rebuild.log 2>&1 || echo "normal rebuild failed"
