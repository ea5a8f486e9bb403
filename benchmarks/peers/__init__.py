"""Peer implementations that benchmarks/bench_kernel.py runs next to hf_flashmla's kernel.

Each peer module exposes:
  NAME: str
  available() -> (bool, reason)          whether it can run at all here (imports, device)
  supports(inputs) -> (bool, reason)     whether it handles this config (e.g. s_q == 1 only)
  make(inputs) -> dict[str, (timed, check)]   named variants: timed() is what is timed; check() runs it
                                         and returns (out, lse) with out [b, s_q, h_q, dv] and
                                         lse [b, h_q, s_q] float32 (or None)
`inputs` is the dict built by bench_kernel.build_inputs (q, k_cache, block_table, cache_seqlens,
lengths, s_q, h_q, dv, softmax_scale, causal, page_size).
"""
