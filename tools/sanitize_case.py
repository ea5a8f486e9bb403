"""A few small decode calls for compute-sanitizer (memcheck / racecheck), run by tools/device_check.sh:
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python3 -m tools.sanitize_case
Each case goes through the public API (schedule + kernel, including the split-KV combine) and is compared
with the reference, so a sanitizer run also says whether the results were right. Exit status 1 on a
wrong result. `--cases 0,3` runs only those cases (racecheck is slow)."""
import argparse
import sys

import torch

import hf_flashmla
from hf_flashmla import fp8_latent
from hf_flashmla.testing import make_paged_inputs

CASES = [  # (lengths, s_q, h_q, dtype, causal, fp8 cache)
    ([65, 0, 1, 130], 2, 16, torch.bfloat16, True, False),
    ([300], 1, 128, torch.bfloat16, True, False),
    ([64, 63], 4, 64, torch.float16, False, False),
    ([2000, 5, 1500], 1, 16, torch.bfloat16, True, False),  # long enough to be split across SM parts
    ([1200] * 6, 2, 128, torch.bfloat16, True, False),
    ([2000, 65, 0, 1, 700], 1, 16, torch.bfloat16, True, True),  # the narrow FP8 kernel, split
    ([300, 77], 2, 16, torch.bfloat16, False, True),  # the narrow FP8 kernel, 32 rows (two warpgroups)
    ([300, 77], 1, 64, torch.bfloat16, True, True),  # the seesaw kernel's FP8 feed
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=None, help="comma-separated case numbers (default: all)")
    args = parser.parse_args()
    chosen = range(len(CASES)) if args.cases is None else [int(n) for n in args.cases.split(",")]
    print(f"backend: {hf_flashmla.backend(torch.device('cuda'))}", flush=True)
    failures = 0
    for n in chosen:
        lengths, s_q, h_q, dtype, causal, fp8 = CASES[n]
        inputs = make_paged_inputs(lengths, s_q, h_q, dtype=dtype, device="cuda", seed=n)
        if fp8:
            inputs.k_cache = fp8_latent.quantize(inputs.k_cache, 512)
        metadata, num_splits = hf_flashmla.get_mla_metadata(inputs.cache_seqlens, s_q * h_q, 1)
        out, lse = hf_flashmla.flash_mla_with_kvcache(inputs.q, inputs.k_cache, inputs.block_table,
                                                      inputs.cache_seqlens, 512, metadata, num_splits, causal=causal,
                                                      is_fp8_kvcache=fp8)
        torch.cuda.synchronize()
        ref_out, ref_lse = hf_flashmla.mla_decode_reference(inputs.q, inputs.k_cache, inputs.block_table,
                                                            inputs.cache_seqlens, 512, 576 ** -0.5, causal,
                                                            is_fp8_kvcache=fp8)
        err = ((out.float() - ref_out.float()).norm() / ref_out.float().norm().clamp_min(1e-12)).item()
        seen = torch.isfinite(ref_lse)
        same_inf = torch.equal(seen, torch.isfinite(lse))
        lse_err = (lse - ref_lse)[seen].abs().max().item() if seen.any() and same_inf else float("inf")
        ok = err < 2e-2 and lse_err < 1e-2 and torch.isfinite(out).all().item()
        failures += not ok
        print(f"case {n}: lengths={lengths} s_q={s_q} h_q={h_q} {dtype} causal={causal} splits={num_splits.tolist()} "
              f"{'fp8 ' if fp8 else ''}err(out)={err:.2e} err(lse)={lse_err:.2e} {'ok' if ok else 'WRONG'}", flush=True)
    print(f"sanitize_case: {len(chosen) - failures}/{len(chosen)} cases right")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
