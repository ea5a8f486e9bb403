"""Benchmarks of hf_flashmla (benchmarks/README.md): run from the repository root as modules, e.g.
`python -m benchmarks.bench_kernel` or `python -m benchmarks.bench_generate`."""
