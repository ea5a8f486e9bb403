"""Developer and device tooling, run from the repository root as modules (`python -m tools.NAME`):

- device_check.sh: the one script for the GPU machine: build, GPU tests, smoke and sanitizer checks,
  generate()/evaluate checks, multi-GPU checks, benchmarks (CONTRIBUTING.md);
- kernel_smoke.py: the compiled op on edge cases, then a few timings (first thing after a kernel change);
- sanitize_case.py: small decode calls for compute-sanitizer's memcheck and racecheck;
- multi_gpu_check.py: flash_mla under device_map and tp_plan, and a 2-GPU decode benchmark;
- gen_wgmma_header.py: writes csrc/wgmma_ops.cuh (the inline-PTX wgmma wrappers).
"""
