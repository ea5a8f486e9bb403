#!/usr/bin/env python3
"""Times the decode kernel under hand-built schedules against get_mla_metadata's, for schedule design (GPU).

Candidate "pieces": with k = parts // b >= 2, sequence i is cut into k equal page ranges, one per part (parts
k*b.. are empty), instead of the balanced cut, whose parts mostly hold the end of one sequence and the start of
the next (two items: two Q loads, two partial epilogues). Run 42 measured it against the balanced cut, after
which hf_flashmla/schedule.py took it (its "pieces" rule): where the rule applies, both rows are now the same
schedule, so the script checks the hand-built rows against the built-in ones; HF_FLASHMLA_SPLIT_COMBINE_PAGES=
-1000000000000 brings the balanced cut back as the default row. Each schedule's output is checked against the default
schedule's on the same inputs; timing as scripts/bench_kernel.py (do_bench median, L2 flushed, inputs rotated).

    python3 scripts/schedule_experiment.py [--only b64_L4096] [--json out.json]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import bench_kernel as bk  # noqa: E402
import hf_flashmla  # noqa: E402
from hf_flashmla import schedule  # noqa: E402


def pieces_schedule(lengths, num_parts, device):
    """k = num_parts // b equal page ranges per sequence, one per part; None where k < 2 or a sequence has fewer
    than k pages."""
    batch = len(lengths)
    k = num_parts // batch
    pages = [-(-n // bk.PAGE) for n in lengths]
    if k < 2 or min(pages) < k:
        return None
    rows = [[i, j * n // k, i, (j + 1) * n // k, j, 0, 0, 0] for i, n in enumerate(pages) for j in range(k)]
    last = batch - 1
    rows += [[last, pages[last], last, pages[last], 0, 0, 0, 0]] * (num_parts - len(rows))
    num_splits = [k * i for i in range(batch + 1)]
    return (torch.tensor(rows, dtype=torch.int32, device=device),
            torch.tensor(num_splits, dtype=torch.int32, device=device))


def split_indices_consistent(metadata, num_splits, lengths):
    """Split j of a sequence must be the j-th non-empty range (the kernel writes partial row split_base + j)."""
    pages = [-(-n // bk.PAGE) for n in lengths]
    seen = {}
    for row in metadata.tolist():
        for i, start, stop, split in schedule.iterate_part(row, pages):
            seen.setdefault(i, []).append(split)
    for i, splits in seen.items():
        if sorted(splits) != list(range(int(num_splits[i + 1] - num_splits[i]))):
            return False
    return True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="b64_", help="comma-separated substrings of main-table config names")
    parser.add_argument("--varlen", action="store_true", help="also the varlen configs")
    parser.add_argument("--warmup-ms", type=float, default=10)
    parser.add_argument("--rep-ms", type=float, default=40)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    timer = bk.Timer(device, args.warmup_ms, args.rep_ms)
    wanted = [w for w in args.only.split(",") if w]
    configs = [c for c in bk.main_configs() if any(w in c.name for w in wanted) and (args.varlen or not c.varlen)]
    results = []
    print(f"{'config':<34}{'parts':>6}{'default us':>12}{'pieces us':>11}{'ratio':>8}  check")
    for cfg in configs:
        copies = bk.copies_for(cfg, torch.bfloat16)
        inputs = bk.build_inputs(cfg, device, torch.bfloat16, 0, copies)
        rows_per_kv = cfg.s_q * cfg.h_q // bk.H_KV
        num_sms = torch.cuda.get_device_properties(0).multi_processor_count
        num_parts = schedule.num_sm_parts_for(rows_per_kv, bk.H_KV, num_sms)
        default = hf_flashmla.get_mla_metadata(inputs[0]["cache_seqlens"], rows_per_kv, bk.H_KV)
        pieces = pieces_schedule(cfg.lengths, num_parts, device)
        if pieces is None:
            continue
        assert split_indices_consistent(*pieces, cfg.lengths)

        def fns(meta):
            out = []
            for x in inputs:
                args_ = (x["q"], x["k_cache"], x["block_table"], x["cache_seqlens"], x["dv"], *meta)
                out.append(lambda a=args_: hf_flashmla.flash_mla_with_kvcache(*a, softmax_scale=x["softmax_scale"],
                                                                              causal=True))
            return out
        ref_out, ref_lse = fns(default)[0]()
        got_out, got_lse = fns(pieces)[0]()
        err = ((got_out.float() - ref_out.float()).norm() / ref_out.float().norm()).item()
        ok = err < 1e-2 and torch.allclose(got_lse, ref_lse, atol=1e-3, rtol=1e-4)
        t_default = timer(bk.rotating(fns(default))) * 1e3
        t_pieces = timer(bk.rotating(fns(pieces))) * 1e3
        results.append(dict(name=cfg.name, parts=num_parts, default_us=t_default, pieces_us=t_pieces, ok=ok, err=err))
        print(f"{cfg.name:<34}{num_parts:>6}{t_default:>12.1f}{t_pieces:>11.1f}{t_pieces / t_default:>8.3f}  "
              f"{'ok' if ok else f'WRONG (err {err:.3g})'}", flush=True)
        del inputs
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
