"""python -m hf_flashmla.demo: one flash_mla_with_kvcache call on a small random paged cache, on the
best backend available, checked against the reference and a dense float64 computation."""
from __future__ import annotations

import argparse
import sys

import torch

from hf_flashmla import backend, flash_mla_with_kvcache, get_mla_metadata, mla_decode_reference
from hf_flashmla.testing import dense_attention, make_paged_inputs

LENGTHS = [37, 64, 300, 1025]  # varlen, page-aligned and not
S_Q, H_Q, H_KV = 2, 16, 1
TOLERANCE = 1e-2  # relative error of bf16 output against float64


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double().cpu() - expected.cpu()).norm() / expected.norm())


def lse_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    finite = torch.isfinite(expected)
    return float((actual.double().cpu() - expected)[finite].abs().max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    choice = backend(args.device)
    print(f"backend: {choice.name} ({choice.reason})")
    inputs = make_paged_inputs(LENGTHS, S_Q, H_Q, H_KV, dtype=torch.bfloat16, device=args.device, seed=args.seed)
    print(f"q {tuple(inputs.q.shape)} {inputs.q.dtype}, k_cache {tuple(inputs.k_cache.shape)}, "
          f"block_table {tuple(inputs.block_table.shape)}, cache_seqlens {inputs.cache_seqlens.tolist()}, causal")

    metadata, num_splits = get_mla_metadata(inputs.cache_seqlens, S_Q * H_Q // H_KV, H_KV)
    print(f"schedule: {metadata.shape[0]} SM parts, splits per sequence "
          f"{torch.diff(num_splits).tolist()}")
    out, lse = flash_mla_with_kvcache(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, 512,
                                      metadata, num_splits, causal=True)
    print(f"out {tuple(out.shape)} {out.dtype}, lse {tuple(lse.shape)} {lse.dtype}")

    reference_out, reference_lse = mla_decode_reference(inputs.q, inputs.k_cache, inputs.block_table,
                                                        inputs.cache_seqlens, 512, None, True)
    dense_out, dense_lse = dense_attention(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens,
                                           causal=True)
    error_vs_dense = relative_error(out, dense_out)
    print(f"vs dense float64: out relative error {error_vs_dense:.2e}, lse max abs error "
          f"{lse_error(lse, dense_lse):.2e}")
    print(f"vs reference:     out relative error {relative_error(out, reference_out.double()):.2e}, "
          f"lse max abs error {lse_error(lse, reference_lse.double().cpu()):.2e}")
    if error_vs_dense > TOLERANCE:
        print(f"FAILED: relative error above {TOLERANCE}")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
