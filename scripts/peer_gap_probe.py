#!/usr/bin/env python3
"""Device diagnostic: the configs where a peer is ahead, ours under hand-built schedules next to the peer, in
turn, in one process (do_bench median, L2 flushed, inputs rotated: scripts/bench_kernel.py's protocol).

Schedules (ours):
  default  get_mla_metadata's.
  even     whole sequences, part p taking sequences floor(p b / P) .. floor((p + 1) b / P) - 1 (b > P only): the
           snapped schedule without its rounding drift. Run 97 measured it where, at ~1.9 sequences per part, the
           nearest-end bounds gave some parts three sequences and the rule fell back to the balanced cut; since
           then the schedule takes these bounds itself wherever their largest part is strictly smaller.
  balanced the plain balanced cut (HF_FLASHMLA_SPLIT_COMBINE_PAGES very negative).
  per_sequence  one part per sequence (b <= P only; parts past b empty): no split, no combine, b CTAs streaming.
  inline   the default schedule with the in-kernel merge (HF_FLASHMLA_MERGE=inline: no combine kernel).
Each schedule's output is checked against the default's on the same inputs.

    python3 scripts/peer_gap_probe.py --only sweep_b128_sq1_h128_base1024,b64_L4096_sq1_h16_equal [--rounds 2]
"""
import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import bench_kernel as bk  # noqa: E402
import hf_flashmla  # noqa: E402
from hf_flashmla import schedule  # noqa: E402


def even_schedule(lengths, num_parts, device):
    """Whole sequences, floor(p b / P) .. floor((p + 1) b / P) - 1 on part p; None where b <= P."""
    batch = len(lengths)
    if batch <= num_parts:
        return None
    pages = [-(-n // bk.PAGE) for n in lengths]
    bounds = [p * batch // num_parts for p in range(num_parts + 1)]
    # A part ends at page 0 of its next sequence (an empty range there), the last one at the end of the batch.
    rows = [[bounds[p], 0, bounds[p + 1], 0, 0, 0, 0, 0] if bounds[p + 1] < batch
            else [bounds[p], 0, batch - 1, pages[-1], 0, 0, 0, 0] for p in range(num_parts)]
    num_splits = [min(i, batch) for i in range(batch + 1)]
    return (torch.tensor(rows, dtype=torch.int32, device=device),
            torch.tensor(num_splits, dtype=torch.int32, device=device))


def per_sequence_schedule(lengths, num_parts, device):
    """Sequence i on part i, parts b.. empty; None where b > P."""
    batch = len(lengths)
    if batch > num_parts:
        return None
    pages = [-(-n // bk.PAGE) for n in lengths]
    rows = [[i, 0, i, pages[i], 0, 0, 0, 0] for i in range(batch)]
    rows += [[batch - 1, pages[-1], batch - 1, pages[-1], 0, 0, 0, 0]] * (num_parts - batch)
    return (torch.tensor(rows, dtype=torch.int32, device=device),
            torch.tensor(list(range(batch + 1)), dtype=torch.int32, device=device))


def with_env(call, name, value):
    """call with os.environ[name] = value while it launches (the op reads it at every launch)."""
    def run():
        saved = os.environ.get(name)
        os.environ[name] = value
        try:
            return call()
        finally:
            if saved is None:
                os.environ.pop(name)
            else:
                os.environ[name] = saved
    return run


def balanced_schedule(seqlens, rows_per_kv):
    saved = os.environ.get(schedule.SPLIT_COMBINE_ENV_VAR)
    os.environ[schedule.SPLIT_COMBINE_ENV_VAR] = "-1000000000000"
    try:
        return hf_flashmla.get_mla_metadata(seqlens, rows_per_kv, bk.H_KV)
    finally:
        if saved is None:
            os.environ.pop(schedule.SPLIT_COMBINE_ENV_VAR)
        else:
            os.environ[schedule.SPLIT_COMBINE_ENV_VAR] = saved


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", required=True, help="comma-separated config names (main table or extras)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peer", default="flashinfer", help="a bench_kernel.py peer, or '' for none")
    parser.add_argument("--schedules", default="default,balanced,even,per_sequence,inline",
                        help="which of ours to time (default is always computed: the others are checked against it)")
    parser.add_argument("--warmup-ms", type=float, default=10)
    parser.add_argument("--rep-ms", type=float, default=40)
    args = parser.parse_args()
    device = torch.device("cuda")
    timer = bk.Timer(device, args.warmup_ms, args.rep_ms)
    wanted = [w for w in args.only.split(",") if w]
    configs = [c for c in bk.main_configs() + bk.extra_configs() if c.name in wanted]
    peer = None
    if args.peer:
        peer = importlib.import_module(bk.PEER_MODULES[args.peer])
        ok, reason = peer.available()
        print(f"peer {args.peer}: {reason}")
        if not ok:
            peer = None
    num_sms = torch.cuda.get_device_properties(0).multi_processor_count
    for cfg in configs:
        copies = bk.copies_for(cfg, torch.bfloat16)
        inputs = bk.build_inputs(cfg, device, torch.bfloat16, 0, copies)
        rows_per_kv = cfg.s_q * cfg.h_q // bk.H_KV
        num_parts = schedule.num_sm_parts_for(rows_per_kv, bk.H_KV, num_sms)
        seqlens = inputs[0]["cache_seqlens"]
        schedules = {"default": hf_flashmla.get_mla_metadata(seqlens, rows_per_kv, bk.H_KV),
                     "balanced": balanced_schedule(seqlens, rows_per_kv)}
        even = even_schedule(cfg.lengths, num_parts, device)
        if even is not None:
            schedules["even"] = even
        per_sequence = per_sequence_schedule(cfg.lengths, num_parts, device)
        if per_sequence is not None:
            schedules["per_sequence"] = per_sequence

        def fns(meta):
            out = []
            for x in inputs:
                a = (x["q"], x["k_cache"], x["block_table"], x["cache_seqlens"], x["dv"], *meta)
                out.append(lambda a=a, s=x["softmax_scale"]: hf_flashmla.flash_mla_with_kvcache(*a, softmax_scale=s,
                                                                                                causal=True))
            return out
        ref_out, ref_lse = fns(schedules["default"])[0]()
        calls, notes = {}, {}
        for name, meta in schedules.items():
            out, lse = fns(meta)[0]()
            err = ((out.float() - ref_out.float()).norm() / ref_out.float().norm()).item()
            notes[name] = f"splits {int(meta[1][-1]) - len(cfg.lengths):+d}" + (
                "" if err < 1e-2 and torch.allclose(lse, ref_lse, atol=1e-3, rtol=1e-4) else f" WRONG (err {err:.3g})")
            calls[name] = bk.rotating(fns(meta))
        inline = [with_env(f, "HF_FLASHMLA_MERGE", "inline") for f in fns(schedules["default"])]
        out, lse = inline[0]()
        err = ((out.float() - ref_out.float()).norm() / ref_out.float().norm()).item()
        notes["inline"] = "" if err < 1e-2 and torch.allclose(lse, ref_lse, atol=1e-3, rtol=1e-4) else f"WRONG {err:.3g}"
        calls["inline"] = bk.rotating(inline)
        if peer is not None:
            variants = [peer.make(x) for x in inputs]
            for key in variants[0]:
                calls[key] = bk.rotating([v[key][0] for v in variants])
                notes[key] = ""
        keep = set(args.schedules.split(",")) | {"default"}
        calls = {name: call for name, call in calls.items()
                 if name in keep or (args.peer and name.startswith(args.peer))}
        times = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                times[name].append(timer(call) * 1e3)
        base = min(times["default"])
        print(f"== {cfg.name} (parts {num_parts})", flush=True)
        for name, values in times.items():
            print(f"   {name:20s} {' '.join(f'{v:8.1f}' for v in values)} us   best/default {min(values) / base:6.3f}  "
                  f"{notes[name]}", flush=True)
        del inputs, calls
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
