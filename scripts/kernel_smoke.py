"""Quick device check of the compiled op: correctness on edge cases, then a few timings.

The full matrix lives in tests/test_kernel_gpu.py and the full benchmark in scripts/bench_kernel.py;
this is the first thing to run after a kernel change (one device call, a minute).

Kernel variants chosen at launch time by environment variables (HF_FLASHMLA_CLUSTER) can be checked and
timed side by side in one process: --variants 0,2,4@128 runs the checks once per variant, and --compare
times FlashMLA's 45 configs (BENCHMARKS.md) under every variant on the same inputs. A variant is the value
of HF_FLASHMLA_CLUSTER, optionally @N: the schedule is then built for N SMs (e.g. 128, so that clusters of
4 fit in one wave)."""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hf_flashmla import _ops, schedule  # noqa: E402
from hf_flashmla.reference import mla_decode_reference  # noqa: E402


def make_inputs(lengths, s_q, h_q, dtype, device="cuda", pool_slack=3):
    batch = len(lengths)
    max_blocks = max(1, max(-(-L // 64) for L in lengths))
    num_blocks = batch * max_blocks + pool_slack
    perm = torch.randperm(num_blocks, device=device)[: batch * max_blocks].to(torch.int32)
    block_table = perm.view(batch, max_blocks).contiguous()
    k_cache = torch.randn(num_blocks, 64, 1, 576, device=device, dtype=dtype)
    q = torch.randn(batch, s_q, h_q, 576, device=device, dtype=dtype)
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    return q, k_cache, block_table, seqlens


VARIANT_SMS = None  # SM count the schedule is built for (None: the device's)


def set_variant(variant):
    """variant: CLUSTER[pMODE][@SMS]: HF_FLASHMLA_CLUSTER ('' = unset), HF_FLASHMLA_PROFILE_MODE (timing aid,
    wrong results on purpose), SM count for the schedule."""
    global VARIANT_SMS
    value, _, sms = variant.partition("@")
    value, _, mode = value.partition("p")
    for name, setting in (("HF_FLASHMLA_CLUSTER", value), ("HF_FLASHMLA_PROFILE_MODE", mode)):
        if setting:
            os.environ[name] = setting
        else:
            os.environ.pop(name, None)
    VARIANT_SMS = int(sms) if sms else None


def run_kernel(q, k_cache, block_table, seqlens, causal):
    s_q, h_q = q.shape[1], q.shape[2]
    meta, splits = schedule.compute_schedule(seqlens, s_q * h_q, 1, num_sms=VARIANT_SMS)
    return _ops.mla_decode(q, k_cache, block_table, seqlens, meta, splits, 576 ** -0.5, causal, 512)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def check(lengths, s_q, h_q, causal, dtype):
    q, k_cache, block_table, seqlens = make_inputs(lengths, s_q, h_q, dtype)
    out, lse = run_kernel(q, k_cache, block_table, seqlens, causal)
    ref_out, ref_lse = mla_decode_reference(q, k_cache, block_table, seqlens, 512, 576 ** -0.5, causal)
    torch.cuda.synchronize()
    finite = torch.isfinite(ref_lse)
    err_out = rel_err(out, ref_out)
    lse_ok = torch.equal(torch.isfinite(lse), finite) and (
        not finite.any() or (lse[finite] - ref_lse[finite]).abs().max().item() < 1e-2)
    ok = err_out < 1e-2 and lse_ok and not torch.isnan(out).any().item()
    print(f"{'ok  ' if ok else 'FAIL'} b={len(lengths)} s_q={s_q} h_q={h_q} causal={int(causal)} {str(dtype)[6:]} "
          f"lens={lengths[:6]}{'...' if len(lengths) > 6 else ''} out_err={err_out:.2e} lse_ok={lse_ok}")
    return ok


def bench(batch, length, s_q, h_q):
    import triton.testing
    q, k_cache, block_table, seqlens = make_inputs([length] * batch, s_q, h_q, torch.bfloat16)
    meta, splits = schedule.compute_schedule(seqlens, s_q * h_q, 1, num_sms=VARIANT_SMS)
    fn = lambda: _ops.mla_decode(q, k_cache, block_table, seqlens, meta, splits, 576 ** -0.5, True, 512)
    ms = triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")
    total = batch * length
    flops = 2 * s_q * h_q * total * (576 + 512)
    bytes_ = 2 * (total * 576 + batch * s_q * h_q * (576 + 512))
    print(f"b={batch:4d} L={length:6d} s_q={s_q} h_q={h_q:3d}: {ms * 1e3:8.1f} us "
          f"{flops / ms / 1e9:6.0f} TFLOP/s {bytes_ / ms / 1e6:6.0f} GB/s")


def compare(variants, warmup_ms, rep_ms, json_path, only_compute=False):
    """Times FlashMLA's 45 configs (or its h_q * s_q >= 128 ones) under every variant, interleaved on the
    same inputs."""
    import triton.testing
    figures = json.loads((Path(__file__).resolve().parent / "flashmla_reference_figures.json").read_text())
    rows = []
    print(f"{'config':28s}" + "".join(f"{v:>16s}" for v in variants) + "   (TFLOP/s | GB/s, ratio vs FlashMLA)")
    for fig in figures["flashmla"]:
        b, L, s_q, h_q = fig["b"], fig["L"], fig["s_q"], fig["h_q"]
        if only_compute and s_q * h_q < 128:
            continue
        torch.manual_seed(0)
        q, k_cache, block_table, seqlens = make_inputs([L] * b, s_q, h_q, torch.bfloat16)
        total = b * L
        flops = 2 * s_q * h_q * total * (576 + 512)
        bytes_ = 2 * (total * 576 + b * s_q * h_q * (576 + 512))
        row = dict(b=b, L=L, s_q=s_q, h_q=h_q, flashmla_ms=fig["flashmla_ms"], ms={})
        cells = []
        for variant in variants:
            set_variant(variant)
            meta, splits = schedule.compute_schedule(seqlens, s_q * h_q, 1, num_sms=VARIANT_SMS)
            fn = lambda: _ops.mla_decode(q, k_cache, block_table, seqlens, meta, splits, 576 ** -0.5, True, 512)
            os.environ["HF_FLASHMLA_CLUSTER_DEBUG"] = "1"
            fn()
            torch.cuda.synchronize()
            os.environ.pop("HF_FLASHMLA_CLUSTER_DEBUG")
            ms = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
            row["ms"][variant] = ms
            perf = flops / ms / 1e9 if s_q * h_q >= 64 else bytes_ / ms / 1e6
            cells.append(f"{perf:7.0f} {fig['flashmla_ms'] / ms:5.3f}  ")
        rows.append(row)
        print(f"b{b}_L{L}_sq{s_q}_h{h_q}".ljust(28) + "".join(f"{c:>16s}" for c in cells), flush=True)
        del q, k_cache, block_table, seqlens
    groups = {"all": lambda r: True, "memory (<=32)": lambda r: r["s_q"] * r["h_q"] <= 32,
              "middle (64)": lambda r: r["s_q"] * r["h_q"] == 64, "compute (>=128)": lambda r: r["s_q"] * r["h_q"] >= 128}
    summary = {}
    for variant in variants:
        summary[variant] = {}
        for name, pick in groups.items():
            ratios = [r["flashmla_ms"] / r["ms"][variant] for r in rows if pick(r)]
            if not ratios:
                continue
            summary[variant][name] = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        print(f"variant {variant!r:10s} geomean vs FlashMLA: " +
              "  ".join(f"{k} {v:.3f}" for k, v in summary[variant].items()))
    if json_path:
        Path(json_path).write_text(json.dumps(dict(variants=variants, rows=rows, summary=summary,
                                                   device=torch.cuda.get_device_name()), indent=1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--check-only", action="store_true")
    parser.add_argument("--profile-one", default=None, help="b,L,s_q,h_q: run that config a few times (for ncu)")
    parser.add_argument("--variants", default=None,
                        help="comma list of CLUSTER[pMODE][@SMS]: HF_FLASHMLA_CLUSTER value, optional "
                             "HF_FLASHMLA_PROFILE_MODE (timing aid), optional SM count for the schedule (e.g. 0,2,0p1,2@128)")
    parser.add_argument("--compare", action="store_true", help="time FlashMLA's 45 configs under every variant")
    parser.add_argument("--warmup-ms", type=float, default=10)
    parser.add_argument("--rep-ms", type=float, default=50)
    parser.add_argument("--only-compute", action="store_true", help="--compare: only h_q * s_q >= 128")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    variants = args.variants.split(",") if args.variants else None
    if args.compare:
        compare(variants or [""], args.warmup_ms, args.rep_ms, args.json, args.only_compute)
        return
    if variants:
        ok = True
        for variant in variants:
            print(f"--- variant {variant!r}", flush=True)
            set_variant(variant)
            t0 = time.time()
            ok &= run_checks()
            print(f"--- variant {variant!r}: {time.time() - t0:.1f} s", flush=True)
        sys.exit(0 if ok else 1)
    if args.profile_one:
        batch, length, s_q, h_q = (int(v) for v in args.profile_one.split(","))
        q, k_cache, block_table, seqlens = make_inputs([length] * batch, s_q, h_q, torch.bfloat16)
        for _ in range(3):
            run_kernel(q, k_cache, block_table, seqlens, True)
        torch.cuda.synchronize()
        return
    if not run_checks() or args.check_only:
        return
    for batch, length in ((64, 4096), (128, 16384)):
        for s_q, h_q in ((1, 16), (1, 32), (2, 16), (1, 64), (1, 128), (2, 128)):
            bench(batch, length, s_q, h_q)


def run_checks():
    torch.manual_seed(0)
    results = []
    # Long sequences first: many pages per SM part exercise the stage hand-over (a hang shows up early).
    results.append(check([8192] * 8, 1, 128, True, torch.bfloat16))
    results.append(check([32768] * 2, 2, 64, True, torch.bfloat16))
    results.append(check([3000, 5000, 12000], 1, 16, False, torch.float16))
    for dtype in (torch.bfloat16, torch.float16):
        for s_q, h_q in ((1, 16), (2, 64), (1, 128), (4, 16), (2, 128)):
            for causal in (False, True):
                results.append(check([0, 1, 63, 64, 65, 300, 1000], s_q, h_q, causal, dtype))
    gen = torch.Generator().manual_seed(1)
    many_short = torch.randint(0, 400, (128,), generator=gen).tolist()  # several sequences per SM part
    for s_q, h_q in ((2, 16), (1, 128), (3, 64)):
        results.append(check(many_short, s_q, h_q, True, torch.bfloat16))
    results.append(check([4641, 45118, 1730, 1696], 4, 16, True, torch.bfloat16))
    print(f"correctness: {sum(results)}/{len(results)} ok", flush=True)
    return all(results)


if __name__ == "__main__":
    main()
