"""Benchmark hf_flashmla's decode kernel against FlashMLA and the other MLA decode kernels, in one run.

For every config (benchmarks/kernel_configs.py): random inputs, every implementation checked against a float32
reference on a subset of the batch, then timed (median of CUDA-event-timed repeats after warm-up, L2 flushed
between repeats, inputs rotated among copies where they would fit in L2). The headline is ours against FlashMLA
(the sgl-flash-mla wheel, benchmarks/peers/flashmla.py): the two are timed alternately --repeats times within each
config and each reports the median; the other peers (FlashInfer, SGLang's Triton kernel, this package's Triton
path, PyTorch gather + matmul) are timed once per pass. --rounds N walks the whole config list N times and reports
each config's median pass (benchmarks/kernel_rounds.py). Also measured: each schedule call alone, the largest
relative error against the float32 reference, and the host time per call on a tiny workload with no sync between
calls. The compact table comes last and everything printed is in the JSON.

Usage (from the repo root; docs/benchmarks.md says how to read the output):
  python -m benchmarks.bench_kernel --quick
  python -m benchmarks.bench_kernel --configs main --rounds 3 --json bench_main.json
  python -m benchmarks.bench_kernel --configs extra,small,h20 --rounds 3 --json bench_extra.json
  python -m benchmarks.bench_kernel --from-json bench_main.json   # print the summary and table again
  python -m benchmarks.bench_kernel --dry-run                     # CPU, tiny configs: checks the plumbing only
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import time
import traceback

import torch

from benchmarks import kernel_configs as kc
from benchmarks import kernel_profile
from benchmarks.gpu_monitor import GpuMonitor
from benchmarks.kernel_report import compact_table, figure_for, load_figures, plot, print_config, report, summarize, \
    summary_lines
from benchmarks.kernel_rounds import merge_rounds, pass_order, round_line

# Peers that are not set up here (no wheel, no bundle) give "not run" rows, not errors.
PEER_MODULES = {"flashmla": "benchmarks.peers.flashmla", "flashinfer": "benchmarks.peers.flashinfer_mla",
                "triton": "benchmarks.peers.triton_ours", "sglang": "benchmarks.peers.sglang_triton",
                "torch": "benchmarks.peers.torch_gather", "triton_fp8": "benchmarks.peers.triton_fp8",
                "ours_fp8": "benchmarks.peers.ours_fp8"}
DEFAULT_IMPLS = ("ours", "flashmla", "flashinfer", "triton", "sglang", "torch")
# Schedule + decode in every call with a fresh FlashMLASchedMeta (the newest API without reuse); opt-in.
STEP_IMPLS = ("ours_step", "flashmla_step")
# The FP8 latent cache (opt-in): --impls ours,ours_fp8 (the sm_90 kernel) or triton,triton_fp8 (the Triton path) times
# it next to the bf16 cache.
LOSSY_IMPLS = ("ours_fp8", "triton_fp8")
ALL_IMPLS = DEFAULT_IMPLS + STEP_IMPLS + LOSSY_IMPLS
# An implementation whose cache is lossy is checked against the float32 reference of the exact cache with its own
# (out, lse) tolerances: e4m3 rounds each key value within 2^-4, about 3e-2 relative on out for random inputs.
LOSSY_TOLERANCES = {"ours_fp8": (6e-2, 0.1), "triton_fp8": (6e-2, 0.1)}
INTERLEAVED = ("ours", "flashmla", "ours_step", "flashmla_step")  # timed alternately, --repeats times each
HOST_CONFIG = kc.Config("host_b1_L256_sq1_h16", "host", 1, [256], 1, 16, 256)


# ------------------------------------------------------------------------------------------------ timing
class Timer:
    def __init__(self, device, warmup_ms, rep_ms):
        self.device, self.warmup_ms, self.rep_ms = device, warmup_ms, rep_ms
        self.kind = "perf_counter median (CPU)"
        self._do_bench = None
        self._flush = None
        if device.type == "cuda":
            self.kind = "cuda events median, L2 flushed per repeat (own loop)"
            try:
                from triton.testing import do_bench
                self._do_bench = do_bench
                self.kind = "triton.testing.do_bench(return_mode='median') (CUDA events, L2 flushed per repeat)"
            except Exception:
                self.flush_buffer()

    def flush_buffer(self):
        """A buffer larger than L2, zeroed before each timed call (made on first use)."""
        if self._flush is None:
            self._flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device=self.device)
        return self._flush

    def __call__(self, fn):
        if self.device.type != "cuda":
            fn()
            samples = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(samples)
        if self._do_bench is not None:
            return float(self._do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median"))
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        est = max((time.perf_counter() - t0) / 5 * 1e3, 1e-3)
        for _ in range(max(1, int(self.warmup_ms / est))):
            fn()
        return flushed_event_median_ms(fn, self._flush, max(10, int(self.rep_ms / est)))


def flushed_event_median_ms(fn, flush, repeats):
    """Median CUDA-event time (ms) of `repeats` calls of fn, with L2 flushed (flush.zero_(), a buffer larger
    than L2) before each: the protocol's timing where triton's do_bench is missing."""
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for i in range(repeats):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def rotating(fns):
    if len(fns) == 1:
        return fns[0]
    state = {"i": 0}

    def call():
        fn = fns[state["i"] % len(fns)]
        state["i"] += 1
        return fn()
    return call


def host_us_per_call(fn, device, calls):
    """Host time per call of `calls` back-to-back calls with no sync between them (the launch cost a decoding
    loop pays), after a warm-up."""
    for _ in range(20):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return elapsed / calls * 1e6


# ------------------------------------------------------------------------------------------- correctness
def compare(out, lse, ref_out, ref_lse, idx, dtype, lossy=None):
    """(relative-norm error of out, max |out - ref| / max |ref|, max abs error of lse, ok) against the float32
    reference on the checked sequences; a non-finite output or a differing inf pattern of lse gives inf.
    lossy: (out tolerance, lse tolerance) of an implementation with a lossy cache (LOSSY_TOLERANCES)."""
    index = torch.tensor(idx, device=out.device)
    got = out.index_select(0, index).float()
    ref = ref_out.float().to(got.device)
    diff = got - ref
    err_out = (diff.norm() / ref.norm().clamp_min(1e-12)).item()
    err_max_rel = (diff.abs().max() / ref.abs().max().clamp_min(1e-12)).item() if ref.numel() else 0.0
    if not torch.isfinite(got).all():
        err_out = err_max_rel = float("inf")
    err_lse = None
    if lse is not None:
        got_lse = lse.index_select(0, index).float()
        ref_lse = ref_lse.float().to(got_lse.device)
        finite = torch.isfinite(ref_lse)
        if not torch.equal(finite, torch.isfinite(got_lse)):
            err_lse = float("inf")
        elif finite.any():
            err_lse = (got_lse[finite] - ref_lse[finite]).abs().max().item()
        else:
            err_lse = 0.0
    tol_out = 2e-2 if dtype == torch.bfloat16 else 1e-2
    lse_tol = 1e-2 + 1e-3 * ref_lse.abs().nan_to_num(0, 0, 0).max().item() if lse is not None else None
    if lossy is not None:
        tol_out, lse_tol = lossy[0], lossy[1] if lse is not None else None
    ok = err_out < tol_out and (err_lse is None or err_lse < lse_tol)
    return err_out, err_max_rel, err_lse, ok


def load_reference():
    try:
        from hf_flashmla import mla_decode_reference
        return mla_decode_reference, "hf_flashmla.mla_decode_reference on float32 inputs"
    except Exception as error:  # the bench still runs: a float32 gather + matmul stands in
        from benchmarks.peers import torch_gather

        def fallback(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal):
            lengths = cache_seqlens.tolist()
            return torch_gather._step(q, k_cache, block_table, cache_seqlens, max(1, max(lengths)),
                                      softmax_scale, causal, head_dim_v)
        return fallback, f"float32 gather fallback (hf_flashmla reference unavailable: {error!r})"


# ---------------------------------------------------------------------------------------------- impls
class Ours:
    name = "ours"

    def __init__(self, allow_reference=False):
        self.error = None
        self.allow_reference = allow_reference
        try:
            import hf_flashmla
            self.api = hf_flashmla
        except Exception as error:
            self.api = None
            self.error = f"import hf_flashmla failed: {error!r}"

    def backend_name(self, device):
        if self.api is None:
            return "unavailable"
        try:
            backend = self.api.backend(device)
            return getattr(backend, "name", str(backend))
        except Exception as error:
            return f"unknown ({error!r})"

    def schedule_fn(self, inputs):
        rows = inputs["s_q"] * inputs["h_q"] // kc.H_KV
        return lambda: self.api.get_mla_metadata(inputs["cache_seqlens"], rows, kc.H_KV)

    def _args(self, inputs):
        return (inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"], inputs["dv"])

    def make(self, inputs):
        """First-generation API: the schedule tensors computed once, outside the timed call."""
        meta, splits = self.schedule_fn(inputs)()
        args, kwargs = self._args(inputs), dict(softmax_scale=inputs["softmax_scale"], causal=inputs["causal"])
        fn = lambda: self.api.flash_mla_with_kvcache(*args, meta, splits, **kwargs)  # noqa: E731
        return {"ours": (fn, fn)}

    def make_newest(self, inputs):
        """Newest API with one FlashMLASchedMeta reused by every call (as FlashMLA's is timed)."""
        sched_meta, _ = self.api.get_mla_metadata()
        args, kwargs = self._args(inputs), dict(softmax_scale=inputs["softmax_scale"], causal=inputs["causal"])
        fn = lambda: self.api.flash_mla_with_kvcache(*args, sched_meta, None, **kwargs)  # noqa: E731
        fn()
        return fn

    def make_step(self, inputs):
        """Schedule + decode in every call: a fresh FlashMLASchedMeta each time."""
        args, kwargs = self._args(inputs), dict(softmax_scale=inputs["softmax_scale"], causal=inputs["causal"])

        def fn():
            return self.api.flash_mla_with_kvcache(*args, self.api.get_mla_metadata()[0], None, **kwargs)
        return {"ours_step": (fn, fn)}


def short_error(error):
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return (text[0] if text else repr(error))[:160]


def load_peers(impls):
    peers = {}
    for impl in impls:
        base = impl.removesuffix("_step")
        if base not in PEER_MODULES or base in peers:
            continue
        try:
            module = importlib.import_module(PEER_MODULES[base])
            ok, reason = module.available()
            if not ok and not str(reason).startswith("not run"):
                reason = f"unavailable: {reason}"
            peers[base] = module if ok else reason
        except Exception as error:
            peers[base] = f"unavailable: {short_error(error)}"
    return peers


def maker_for(impl, ours, peers):
    """(make(inputs) -> {variant: (timed, check)}, None) or (None, the reason it cannot run)."""
    if impl in ("ours", "ours_step"):
        return (ours.make if impl == "ours" else ours.make_step), None
    module = peers.get(impl.removesuffix("_step"))
    if isinstance(module, str) or module is None:
        return None, module or "not loaded"
    return (module.make_step if impl.endswith("_step") else module.make), None


# ------------------------------------------------------------------------------------------------ running
def run_config(cfg, impls, peers, ours, reference, timer, device, dtype, seed, args, log, monitor=None):
    result = dict(name=cfg.name, group=cfg.group, b=cfg.b, mean_len=cfg.mean_len, s_q=cfg.s_q, h_q=cfg.h_q,
                  spread=cfg.spread, varlen=cfg.varlen, sum_len=cfg.sum_len, max_len=max(cfg.lengths),
                  flops=cfg.flops, bytes=cfg.bytes, rows=[], schedule_ms=None, flashmla_schedule_ms=None,
                  extra=cfg.extra)
    copies = kc.copies_for(cfg, dtype) if device.type == "cuda" else 1
    try:
        all_inputs = kc.build_inputs(cfg, device, dtype, seed, copies)
    except Exception as error:
        result["error"] = f"building inputs failed: {short_error(error)}"
        return result
    result["input_copies"] = copies
    inputs = all_inputs[0]
    idx = kc.check_subset(cfg, args.check_seqs)
    result["checked_sequences"] = idx
    try:
        q32, k32, table, lengths = kc.float32_subset(inputs, idx)
        ref_out, ref_lse = reference(q32, k32, table, lengths, kc.D_V, inputs["softmax_scale"], True)
        del q32, k32
    except Exception as error:
        ref_out = ref_lse = None
        result["reference_error"] = short_error(error)

    def add_row(impl, variant, ms=None, errors=(None, None, None, None), error=None, note=None, extra=None):
        err_out, err_max_rel, err_lse, ok = errors
        row = dict(impl=impl, variant=variant, ms=ms, err_out=err_out, err_max_rel=err_max_rel, err_lse=err_lse,
                   ok=ok, error=error, note=note)
        if ms:
            row["tflops"] = cfg.flops / (ms * 1e-3) / 1e12
            row["gbps"] = cfg.bytes / (ms * 1e-3) / 1e9
            if impl in LOSSY_IMPLS:  # the bytes it reads: the FP8 cache (656 B per token) instead of 1152
                fp8_bytes = cfg.bytes - 2 * cfg.sum_len * kc.H_KV * kc.D_QK + cfg.sum_len * kc.H_KV * 656
                row["gbps"] = fp8_bytes / (ms * 1e-3) / 1e9
        row.update(extra or {})
        result["rows"].append(row)
        return row

    def prepare(impl):
        """[(variant, timed, errors)] for impl, or [] after adding its error / note row."""
        if impl in ("ours", "ours_step"):
            if ours.error:
                add_row(impl, impl, error=ours.error)
                return []
            if device.type == "cuda" and ours.backend_name(device) != "cuda_sm90" and not ours.allow_reference:
                add_row(impl, impl, error=f"not timed: backend is {ours.backend_name(device)!r}, not the sm90 "
                                          "kernel (pass --allow-reference-backend to time it anyway)")
                return []
        make, reason = maker_for(impl, ours, peers)
        if make is None:
            add_row(impl, impl, error=reason)
            return []
        if impl not in ("ours", "ours_step"):
            supported, why = peers[impl.removesuffix("_step")].supports(inputs)
            if not supported:
                add_row(impl, impl, note=f"- ({why})")
                return []
        try:
            variant_sets = [make(inp) for inp in all_inputs]
        except Exception as error:
            add_row(impl, impl, error=f"setup: {short_error(error)}")
            log(traceback.format_exc(), debug=True)
            return []
        prepared = []
        for variant in variant_sets[0]:
            errors = (None, None, None, None)
            try:
                out, lse = variant_sets[0][variant][1]()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if ref_out is not None:
                    errors = compare(out, lse, ref_out, ref_lse, idx, dtype, LOSSY_TOLERANCES.get(impl))
                del out, lse
            except Exception as error:
                add_row(impl, variant, error=f"run: {short_error(error)}")
                log(traceback.format_exc(), debug=True)
                continue
            prepared.append((impl, variant, rotating([vs[variant][0] for vs in variant_sets]), errors))
        return prepared

    def time_once(fn):
        """(ms, SM clock / power readings during the timing)."""
        if monitor:
            monitor.start()
        try:
            ms = timer(fn)
        finally:
            clock = monitor.stop() if monitor else {}
        return ms, clock

    def time_all(prepared, repeats):
        """Each variant timed `repeats` times, the variants alternating; rows with the median time."""
        times = {key: [] for key in range(len(prepared))}
        clocks = {key: {} for key in range(len(prepared))}
        failed = {}
        for _ in range(repeats):
            for key, (impl, variant, fn, _) in enumerate(prepared):
                if key in failed:
                    continue
                try:
                    ms, clocks[key] = time_once(fn)
                    times[key].append(ms)
                except Exception as error:
                    failed[key] = f"timing: {short_error(error)}"
        for key, (impl, variant, fn, errors) in enumerate(prepared):
            ms = statistics.median(times[key]) if times[key] else None
            extra = dict(ms_repeats=times[key], **clocks[key])
            if getattr(args, "kernel_times", False) and impl in INTERLEAVED and device.type == "cuda" and times[key]:
                try:
                    extra.update(kernel_profile.kernel_times(fn, timer.flush_buffer()) or {})
                except Exception as error:
                    extra["kernel_times_error"] = short_error(error)
            add_row(impl, variant, ms, errors, error=failed.get(key), extra=extra)

    order = [impl for impl in impls if impl in INTERLEAVED] + [impl for impl in impls if impl not in INTERLEAVED]
    headline = [p for impl in order if impl in INTERLEAVED for p in prepare(impl)]
    if "ours" in impls and not ours.error:
        try:
            result["schedule_ms"] = timer(rotating([ours.schedule_fn(inp) for inp in all_inputs]))
        except Exception as error:
            result["schedule_error"] = short_error(error)
    flashmla = peers.get("flashmla")
    if any(i in impls for i in ("flashmla", "flashmla_step")) and not isinstance(flashmla, (str, type(None))):
        try:
            result["flashmla_schedule_ms"] = timer(rotating([flashmla.schedule_fn(inp) for inp in all_inputs]))
        except Exception as error:
            result["flashmla_schedule_error"] = short_error(error)
    time_all(headline, args.repeats)
    del headline
    for impl in order:
        if impl in INTERLEAVED:
            continue
        prepared = prepare(impl)
        time_all(prepared, 1)
        del prepared
    all_inputs.clear()  # frees the inputs before the next config
    inputs = None
    if device.type == "cuda":
        try:  # a fault of an asynchronous launch can surface only here; keep the rows measured before it
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except Exception as error:
            result["error"] = f"after the last implementation: {short_error(error)}"
    return result


def measure_host_time(ours, peers, impls, device, dtype, calls, log):
    """Host us per call on a tiny workload, ours and FlashMLA alternately three times, medians."""
    inputs = kc.build_inputs(HOST_CONFIG, device, dtype, seed=0)[0]
    fns = {}
    if "ours" in impls and not ours.error:
        try:
            fns["ours (newest API, sched_meta reused)"] = ours.make_newest(inputs)
            fns["ours (metadata tensors)"] = ours.make(inputs)["ours"][0]
        except Exception as error:
            log(f"host time: ours failed: {short_error(error)}")
    flashmla = peers.get("flashmla")
    if "flashmla" in impls and not isinstance(flashmla, (str, type(None))):
        try:
            fns["FlashMLA (sched_meta reused)"] = flashmla.make(inputs)["flashmla"][0]
        except Exception as error:
            log(f"host time: FlashMLA failed: {short_error(error)}")
    samples = {name: [] for name in fns}
    for _ in range(3):
        for name, fn in fns.items():
            samples[name].append(host_us_per_call(fn, device, calls))
    return {"workload": HOST_CONFIG.name, "calls": calls, "device": device.type,
            "us_per_call": {name: statistics.median(values) for name, values in samples.items()}}


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_kernel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small subset of every group")
    parser.add_argument("--configs", default="all", help=f"comma list of groups {kc.GROUPS}, or all")
    parser.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help=f"comma list of {ALL_IMPLS}")
    parser.add_argument("--only", default="",
                        help="run only configs whose name contains one of these comma-separated substrings")
    parser.add_argument("--json", default=None, help="write results to this path")
    parser.add_argument("--plot", default=None, help="write a PNG plot to this path")
    parser.add_argument("--from-json", default=None, help="print the summary and table of an earlier run's JSON")
    parser.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-seqs", type=int, default=4, help="sequences checked against the reference")
    parser.add_argument("--warmup-ms", type=float, default=10)
    parser.add_argument("--rep-ms", type=float, default=40)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timings of ours and FlashMLA per config and pass, alternating (median reported)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="passes over the whole config list; each config reports the median pass")
    parser.add_argument("--host-calls", type=int, default=2000, help="calls timed for the host time per call")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny configs, plumbing only")
    parser.add_argument("--kernel-times", action="store_true",
                        help="also profile ours' and FlashMLA's calls kernel by kernel (torch.profiler): each "
                             "kernel's time and how long a call runs after its decode kernel (kernel_profile.py)")
    parser.add_argument("--allow-reference-backend", action="store_true",
                        help="time 'ours' on CUDA even when it runs the PyTorch reference, not the kernel")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args(argv)
    for name in ("rounds", "repeats", "host_calls", "check_seqs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    args.impl_list = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [i for i in args.impl_list if i not in ALL_IMPLS]
    if unknown:
        parser.error(f"--impls: unknown {unknown}; choose from {ALL_IMPLS}")
    args.groups = list(kc.GROUPS) if args.configs == "all" else [g for g in args.configs.split(",") if g]
    bad = [g for g in args.groups if g not in kc.GROUPS]
    if bad:
        parser.error(f"--configs: unknown groups {bad}; choose from {kc.GROUPS} or all")
    return args


def main(argv=None):
    args = parse_args(argv)

    def log(text, debug=False):
        if debug and not args.verbose:
            return
        print(text, flush=True)

    figures, published = load_figures()
    if args.from_json:
        with open(args.from_json) as handle:
            data = json.load(handle)
        report(data["configs"], data["summary"], data["meta"], log)
        return 0

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type != "cuda" and not args.dry_run:
        log("no CUDA device: running the --dry-run configs on CPU instead")
        args.dry_run = True
    configs = kc.dry_configs() if args.dry_run else kc.configs_for(args.groups, args.quick, args.seed)
    if args.only:
        wanted = [part for part in args.only.split(",") if part]
        configs = [c for c in configs if any(part in c.name for part in wanted)]
    impls = args.impl_list

    ours = Ours(args.allow_reference_backend)
    peers = load_peers(impls)
    reference, reference_name = load_reference()
    timer = Timer(device, args.warmup_ms, args.rep_ms)
    # SM clock and power during each timing: compute-bound configs run at the power cap, so their figures move
    # with the clock the GPU can hold (benchmarks/gpu_monitor.py).
    monitor = GpuMonitor.open(device) if device.type == "cuda" else None
    meta = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                torch=torch.__version__, python=platform.python_version(), dtype=args.dtype,
                backend=ours.backend_name(device), reference=reference_name, timer=timer.kind, impls=impls,
                peers={k: (v if isinstance(v, str) else f"ok ({v.available()[1]})") for k, v in peers.items()},
                rounds=args.rounds, repeats=args.repeats, groups=args.groups, quick=args.quick,
                argv=sys.argv[1:] if argv is None else list(argv), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    try:
        import triton
        meta["triton"] = triton.__version__
    except Exception:
        meta["triton"] = None
    log("# hf_flashmla decode benchmark (docs/benchmarks.md)")
    for key in ("device", "torch", "triton", "dtype", "backend", "reference", "timer", "peers"):
        log(f"#   {key}: {meta[key]}")
    if "ours" in impls and meta["backend"] != "cuda_sm90" and device.type == "cuda":
        log(f"#   WARNING: ours runs on backend {meta['backend']!r}, not the sm90 CUDA kernel")
    log(f"#   {len(configs)} configs; FLOPs = 2*s_q*h_q*sum(len)*(576+512); "
        f"bytes = 2*(sum(len)*576 + b*s_q*h_q*(576+512))")

    passes = []
    for round_index in range(args.rounds):
        if args.rounds > 1:
            log(f"# pass {round_index + 1} of {args.rounds}")
        pass_results = []
        for n, cfg in enumerate(configs):
            try:  # the same seed in every pass: the same inputs
                result = run_config(cfg, pass_order(impls, round_index), peers, ours, reference, timer, device,
                                    dtype, args.seed + n, args, log, monitor)
            except Exception as error:  # never let one config end the run
                result = dict(name=cfg.name, group=cfg.group, b=cfg.b, mean_len=cfg.mean_len, s_q=cfg.s_q,
                              h_q=cfg.h_q, spread=cfg.spread, varlen=cfg.varlen, sum_len=cfg.sum_len,
                              max_len=max(cfg.lengths), flops=cfg.flops, bytes=cfg.bytes, rows=[],
                              error=short_error(error))
                log(traceback.format_exc(), debug=True)
            pass_results.append(result)
            if args.rounds > 1:
                log(round_line(result, round_index, args.rounds))
        passes.append(pass_results)
    results = merge_rounds(passes)
    for cfg, result in zip(configs, results):
        result["published_key"] = cfg.published_key
        result["published"] = published.get(cfg.published_key) if cfg.published_key else None
        result["flashmla_figure"] = figure_for(result, figures)
        print_config(result, figures, published, log)
    host = None
    try:
        calls = min(args.host_calls, 3) if args.dry_run else args.host_calls  # the CPU reference is slow
        host = measure_host_time(ours, peers, impls, device, dtype, calls, log)
    except Exception as error:
        log(f"host time not measured: {short_error(error)}")
    summary = summarize(results, figures, impls, host)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(meta=meta, summary=summary, configs=results, table=compact_table(results, impls),
                           summary_lines=summary_lines(summary, meta)), handle, indent=1, default=str)
        log(f"json written to {args.json}")
    if args.plot:
        plot(results, args.plot, log)
    log("")
    report(results, summary, meta, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
