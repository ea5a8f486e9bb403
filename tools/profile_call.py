"""A few decode calls of one bench_kernel config, ours and FlashMLA's, L2 flushed before each: a workload for
Nsight Compute, which replays each kernel alone (the combine without the decode kernel beside it), run by
tools/device_check.sh's `ncu` stage:
    ncu --kernel-name regex:combine python3 -m tools.profile_call b64_L4096_sq1_h64_varlen4
Configs are bench_kernel's (benchmarks/kernel_configs.py, every group); FlashMLA is the carried wheel's peer
(skipped with a note where it is not set up). The implementations' outputs are compared with each other."""
from __future__ import annotations

import argparse
import sys

import torch

from benchmarks import kernel_configs as kc
from benchmarks.bench_kernel import Ours, load_peers, maker_for


def find_config(name: str) -> kc.Config:
    for cfg in kc.configs_for(kc.GROUPS):
        if cfg.name == name:
            return cfg
    raise SystemExit(f"config: no bench_kernel config named {name!r} (python -m benchmarks.bench_kernel --help)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a bench_kernel config name, e.g. b64_L4096_sq1_h64_varlen4")
    parser.add_argument("--impls", default="ours,flashmla", help="comma list of ours, flashmla, ours_fp8")
    parser.add_argument("--calls", type=int, default=3, help="calls of each implementation")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("profile_call: needs a CUDA device")
    device = torch.device("cuda")
    cfg = find_config(args.config)
    impls = [impl for impl in args.impls.split(",") if impl]
    inputs = kc.build_inputs(cfg, device, torch.bfloat16, seed=0)[0]
    ours, peers = Ours(), load_peers(impls)
    flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device=device)
    outputs = {}
    for impl in impls:
        make, reason = maker_for(impl, ours, peers)
        if make is None:
            print(f"profile_call: {impl} skipped ({reason})")
            continue
        call = next(iter(make(inputs).values()))[0]
        for _ in range(args.calls):
            flush.zero_()
            out, _ = call()
        torch.cuda.synchronize()
        outputs[impl] = out.float()
        print(f"profile_call: {cfg.name} {impl}: {args.calls} calls")
    if len(outputs) > 1:
        first, *rest = outputs
        for impl in rest:
            diff = ((outputs[impl] - outputs[first]).norm() / outputs[first].norm().clamp_min(1e-12)).item()
            print(f"profile_call: {impl} against {first}: relative difference {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
