"""Quick device check of the compiled op: correctness on edge cases, then a few timings
(`python -m tools.kernel_smoke`; exit 1 when a case is wrong).

The full matrix lives in tests/test_kernel_gpu.py and the full benchmark in benchmarks/bench_kernel.py;
this is the first thing to run after a kernel change (a minute)."""
import argparse

import torch

from hf_flashmla import _ops, fp8_latent, schedule
from hf_flashmla.reference import mla_decode_reference


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


def decode_call(q, k_cache, block_table, seqlens, meta, splits, causal=True, fp8=False):
    """The compiled op on these inputs and schedule, default softmax scale, dv = 512: the call the device scripts
    time (the schedule is computed once, outside the timed call, as a decode step does). fp8: k_cache is in the FP8
    layout (fp8_latent)."""
    return lambda: _ops.mla_decode(q, k_cache, block_table, seqlens, meta, splits, 576 ** -0.5, causal, 512,
                                   is_fp8_kvcache=fp8)


def run_kernel(q, k_cache, block_table, seqlens, causal, fp8=False):
    s_q, h_q = q.shape[1], q.shape[2]
    meta, splits = schedule.compute_schedule(seqlens, s_q * h_q, 1)
    return decode_call(q, k_cache, block_table, seqlens, meta, splits, causal, fp8)()


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def check(lengths, s_q, h_q, causal, dtype, fp8=False):
    """The op against the reference; with fp8 both read the same FP8 cache (the reference dequantizes by the
    kernel's rule, so the error is the bf16 kernel's, not the quantization's)."""
    q, k_cache, block_table, seqlens = make_inputs(lengths, s_q, h_q, dtype)
    if fp8:
        k_cache = fp8_latent.quantize(k_cache, 512)
    out, lse = run_kernel(q, k_cache, block_table, seqlens, causal, fp8)
    ref_out, ref_lse = mla_decode_reference(q, k_cache, block_table, seqlens, 512, 576 ** -0.5, causal, fp8)
    torch.cuda.synchronize()
    finite = torch.isfinite(ref_lse)
    err_out = rel_err(out, ref_out)
    lse_ok = torch.equal(torch.isfinite(lse), finite) and (
        not finite.any() or (lse[finite] - ref_lse[finite]).abs().max().item() < 1e-2)
    ok = err_out < 1e-2 and lse_ok and not torch.isnan(out).any().item()
    print(f"{'ok  ' if ok else 'FAIL'} b={len(lengths)} s_q={s_q} h_q={h_q} causal={int(causal)} {str(dtype)[6:]}"
          f"{' fp8-cache' if fp8 else ''} "
          f"lens={lengths[:6]}{'...' if len(lengths) > 6 else ''} out_err={err_out:.2e} lse_ok={lse_ok}")
    return ok


def bench(batch, length, s_q, h_q):
    import triton.testing
    q, k_cache, block_table, seqlens = make_inputs([length] * batch, s_q, h_q, torch.bfloat16)
    meta, splits = schedule.compute_schedule(seqlens, s_q * h_q, 1)
    fn = decode_call(q, k_cache, block_table, seqlens, meta, splits)
    ms = triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")
    total = batch * length
    flops = 2 * s_q * h_q * total * (576 + 512)
    bytes_ = 2 * (total * 576 + batch * s_q * h_q * (576 + 512))
    print(f"b={batch:4d} L={length:6d} s_q={s_q} h_q={h_q:3d}: {ms * 1e3:8.1f} us "
          f"{flops / ms / 1e9:6.0f} TFLOP/s {bytes_ / ms / 1e6:6.0f} GB/s")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--check-only", action="store_true")
    parser.add_argument("--profile-one", default=None,
                        help="b,L,s_q,h_q (or L1:L2:..,s_q,h_q for given lengths): run that config a few times "
                             "(for ncu)")
    args = parser.parse_args()
    if args.profile_one:
        fields = args.profile_one.split(",")
        if len(fields) == 3:
            lengths, s_q, h_q = [int(v) for v in fields[0].split(":")], int(fields[1]), int(fields[2])
        else:
            batch, length, s_q, h_q = (int(v) for v in fields)
            lengths = [length] * batch
        q, k_cache, block_table, seqlens = make_inputs(lengths, s_q, h_q, torch.bfloat16)
        for _ in range(3):
            run_kernel(q, k_cache, block_table, seqlens, True)
        torch.cuda.synchronize()
        return 0
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
    if _ops.fp8_kernel_available():  # FP8: the narrow kernel (s1 h16) and the feed: page edges, a long split sequence
        for s_q, h_q in ((1, 16), (2, 128)):
            results.append(check([0, 1, 63, 64, 65, 300, 1000], s_q, h_q, True, torch.bfloat16, fp8=True))
        results.append(check([4641, 45118, 1730, 1696], 4, 16, True, torch.bfloat16, fp8=True))
    print(f"correctness: {sum(results)}/{len(results)} ok")
    if not all(results):
        return 1
    if args.check_only:
        return 0
    for batch, length in ((64, 4096), (128, 16384)):
        for s_q, h_q in ((1, 16), (1, 32), (2, 16), (1, 64), (1, 128), (2, 128)):
            bench(batch, length, s_q, h_q)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
