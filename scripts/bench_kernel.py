#!/usr/bin/env python3
"""Benchmark hf_flashmla's decode kernel against FlashMLA's figures and peers, per BENCHMARKS.md.

For every config: build random inputs (randn data, block tables = a random permutation of the page pool),
check each implementation against hf_flashmla.mla_decode_reference on a subset of the batch, then time it
(median of CUDA-event-timed repeats after warm-up, L2 flushed between repeats, inputs rotated among copies
when they would fit in L2). The schedule (get_mla_metadata) is timed separately.

  FLOPs = 2 * s_q * h_q * sum(len) * (576 + 512)
  bytes = 2 * (sum(len) * 576 + b * s_q * h_q * 576 + b * s_q * h_q * 512)

Usage (on the GPU machine, from the repo root):
  python3 scripts/bench_kernel.py --quick
  python3 scripts/bench_kernel.py --configs all --json bench.json --plot bench.png
  python3 scripts/bench_kernel.py --configs all --rounds 3   # median of three passes per config
  python3 scripts/bench_kernel.py --dry-run          # CPU, tiny configs: checks the plumbing only
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(SCRIPTS)
for path in (REPO_ROOT, SCRIPTS):
    if path not in sys.path:
        sys.path.insert(0, path)

from bench_rounds import merge_rounds, pass_order, round_line  # noqa: E402
from gpu_monitor import GpuMonitor  # noqa: E402

D_QK, D_V, PAGE, H_KV = 576, 512, 64, 1
L2_BYTES = 50 * 1024 * 1024
FIGURES_PATH = os.path.join(SCRIPTS, "flashmla_reference_figures.json")
# BENCHMARKS.md's classes by query rows per KV head (h_q * s_q): memory-bound up to 32, compute-bound from 128.
MEMORY_BOUND_MAX_ROWS, COMPUTE_BOUND_MIN_ROWS = 32, 128
# FlashInfer runs from a trimmed bundle in .fi/ (scripts/peers/flashinfer_mla.py): without it, its row says "not run".
PEER_MODULES = {"sglang": "peers.sglang_triton", "torch": "peers.torch_gather", "triton": "peers.triton_ours",
                "flashinfer": "peers.flashinfer_mla"}
ALL_IMPLS = ("ours", "sglang", "torch", "triton", "flashinfer")


# ----------------------------------------------------------------------------------------------- configs
@dataclass
class Config:
    name: str
    group: str  # main | extra | dry
    b: int
    lengths: list
    s_q: int
    h_q: int
    mean_len: int
    varlen: bool = False
    published_key: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def sum_len(self):
        return sum(self.lengths)

    @property
    def flops(self):
        return 2 * self.s_q * self.h_q * self.sum_len * (D_QK + D_V)

    @property
    def bytes(self):
        rows = self.b * self.s_q * self.h_q
        return 2 * (self.sum_len * H_KV * D_QK + rows * D_QK + rows * D_V)

    @property
    def rows(self):
        return self.s_q * self.h_q

    def key(self):
        return (self.b, self.mean_len, self.s_q, self.h_q)


def varlen_lengths(b, mean, seed):
    gen = torch.Generator().manual_seed(seed)
    draws = torch.normal(float(mean), mean / 4.0, size=(b,), generator=gen)
    return [max(1, int(round(x))) for x in draws.tolist()]


def main_configs(quick=False, seed=0):
    batches, means, heads, sqs, kinds = (64, 128), (4096, 8192, 16384), (16, 32, 64, 128), (1, 2), (False, True)
    if quick:
        means, heads, kinds = (4096, 16384), (16, 128), (False,)
    configs = []
    for b, mean, s_q, h_q, varlen in itertools.product(batches, means, sqs, heads, kinds):
        lengths = varlen_lengths(b, mean, seed + b * 7 + mean) if varlen else [mean] * b
        name = f"b{b}_L{mean}_sq{s_q}_h{h_q}_{'varlen' if varlen else 'equal'}"
        configs.append(Config(name, "main", b, lengths, s_q, h_q, mean, varlen))
    return configs


def extra_configs(quick=False):
    configs = [
        Config("uneven_b4_sq4_h16", "extra", 4, [4641, 45118, 1730, 1696], 4, 16, 13296, True,
               "uneven_b4_sq4_h16"),
        Config("b128_1K_sq1_h16", "extra", 128, [1024] * 128, 1, 16, 1024, False, "b128_1K_sq1_h16"),
        Config("b16_sq16_1K_h16", "extra", 16, [1024] * 16, 16, 16, 1024, False, "b16_sq16_1K_h16"),
    ]
    if quick:
        return configs
    configs.append(Config("b16_64K_sq1_h16", "extra", 16, [65536] * 16, 1, 16, 65536, False, "b16_64K_sq1_h16"))
    for b, mean, s_q in itertools.product((64, 128), (4096, 16384), (3, 4)):
        configs.append(Config(f"b{b}_L{mean}_sq{s_q}_h16", "extra", b, [mean] * b, s_q, 16, mean))
    for base in (1024, 2048, 4096, 8192, 16384, 32768):  # FlashMLA's own sweep: lengths base + 2i
        lengths = [base + 2 * i for i in range(128)]
        configs.append(Config(f"sweep_b128_sq1_h128_base{base}", "extra", 128, lengths, 1, 128,
                              sum(lengths) // 128, True, extra={"sweep_base": base}))
    return configs


def dry_configs():
    return [
        Config("dry_b2_sq1_h16", "dry", 2, [100, 37], 1, 16, 68, True),
        Config("dry_b3_sq2_h16", "dry", 3, [130, 64, 1], 2, 16, 65, True),
    ]


# ------------------------------------------------------------------------------------------------ inputs
def build_inputs(cfg, device, dtype, seed, copies=1):
    """Returns a list of `copies` input dicts (same lengths and block table, independent random data)."""
    gen = torch.Generator().manual_seed(seed)
    blocks = [-(-n // PAGE) for n in cfg.lengths]
    total_blocks = max(1, sum(blocks))
    max_blocks = max(1, max(blocks))
    perm = torch.randperm(total_blocks, generator=gen).to(torch.int32)
    block_table = torch.zeros(cfg.b, max_blocks, dtype=torch.int32)
    offset = 0
    for i, n in enumerate(blocks):
        block_table[i, :n] = perm[offset:offset + n]
        offset += n
    block_table = block_table.to(device)
    cache_seqlens = torch.tensor(cfg.lengths, dtype=torch.int32, device=device)
    out = []
    for c in range(copies):
        torch.manual_seed(seed * 1000 + c)
        k_cache = torch.randn(total_blocks, PAGE, H_KV, D_QK, device=device, dtype=dtype)
        q = torch.randn(cfg.b, cfg.s_q, cfg.h_q, D_QK, device=device, dtype=dtype)
        out.append(dict(q=q, k_cache=k_cache, block_table=block_table, cache_seqlens=cache_seqlens,
                        lengths=list(cfg.lengths), s_q=cfg.s_q, h_q=cfg.h_q, dv=D_V, page_size=PAGE,
                        softmax_scale=D_QK ** -0.5, causal=True))
    return out


def copies_for(cfg, dtype):
    """Enough independent input copies that rotating among them defeats the 50 MB L2."""
    per_copy = cfg.bytes * (2 if dtype == torch.float32 else 1)
    if per_copy >= L2_BYTES:
        return 1
    return min(16, math.ceil(4 * L2_BYTES / max(per_copy, 1)))


def check_subset(cfg, limit):
    if cfg.b <= limit:
        return list(range(cfg.b))
    longest = max(range(cfg.b), key=lambda i: cfg.lengths[i])
    idx = list(range(limit - 1))
    if longest not in idx:
        idx.append(longest)
    else:
        idx.append(limit - 1)
    return idx


# ------------------------------------------------------------------------------------------------ timing
class Timer:
    def __init__(self, device, warmup_ms, rep_ms):
        self.device, self.warmup_ms, self.rep_ms = device, warmup_ms, rep_ms
        self.kind = "perf_counter median (CPU)"
        self._do_bench = None
        if device.type == "cuda":
            self.kind = "cuda events median, L2 flushed per repeat (own loop)"
            try:
                from triton.testing import do_bench
                self._do_bench = do_bench
                self.kind = "triton.testing.do_bench(return_mode='median') (CUDA events, L2 flushed per repeat)"
            except Exception:
                self._flush = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device=device)

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
    than L2) before each: the benchmark protocol's timing where triton's do_bench is missing (scripts/clock_probe.py
    uses it too)."""
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


# ------------------------------------------------------------------------------------------- correctness
def compare(out, lse, ref_out, ref_lse, idx, dtype):
    """Relative-norm error of out, max abs error of lse (finite entries; a differing inf pattern = inf)."""
    index = torch.tensor(idx, device=out.device)
    got = out.index_select(0, index).float()
    ref = ref_out.float().to(got.device)
    err_out = ((got - ref).norm() / ref.norm().clamp_min(1e-12)).item()
    if not torch.isfinite(got).all():
        err_out = float("inf")
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
    ok = err_out < tol_out and (err_lse is None or err_lse < 1e-2 + 1e-3 * ref_lse.abs().nan_to_num(0, 0, 0).max().item())
    return err_out, err_lse, ok


def load_reference():
    try:
        from hf_flashmla import mla_decode_reference
        return mla_decode_reference, "hf_flashmla.mla_decode_reference"
    except Exception as error:  # the bench still runs: a float32 gather + matmul stands in
        from peers import torch_gather

        def fallback(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal):
            lengths = cache_seqlens.tolist()
            return torch_gather._step(q.float(), k_cache.float(), block_table, cache_seqlens, max(1, max(lengths)),
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
            self.get_mla_metadata = hf_flashmla.get_mla_metadata
            self.flash_mla_with_kvcache = hf_flashmla.flash_mla_with_kvcache
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
        cfg_rows = inputs["s_q"] * inputs["h_q"] // H_KV
        return lambda: self.get_mla_metadata(inputs["cache_seqlens"], cfg_rows, H_KV)

    def make(self, inputs):
        meta, splits = self.schedule_fn(inputs)()
        args = (inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"], inputs["dv"],
                meta, splits)
        kwargs = dict(softmax_scale=inputs["softmax_scale"], causal=inputs["causal"])
        fn = lambda: self.flash_mla_with_kvcache(*args, **kwargs)  # noqa: E731
        return {"ours": (fn, fn)}


def short_error(error):
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return (text[0] if text else repr(error))[:160]


def run_config(cfg, impls, peers, ours, reference, timer, device, dtype, seed, check_seqs, figures, log,
               monitor=None):
    result = dict(name=cfg.name, group=cfg.group, b=cfg.b, mean_len=cfg.mean_len, s_q=cfg.s_q, h_q=cfg.h_q,
                  varlen=cfg.varlen, sum_len=cfg.sum_len, max_len=max(cfg.lengths), flops=cfg.flops,
                  bytes=cfg.bytes, rows=[], schedule_ms=None, extra=cfg.extra)
    copies = copies_for(cfg, dtype) if device.type == "cuda" else 1
    try:
        all_inputs = build_inputs(cfg, device, dtype, seed, copies)
    except Exception as error:
        result["error"] = f"building inputs failed: {short_error(error)}"
        return result
    result["input_copies"] = copies
    inputs = all_inputs[0]
    idx = check_subset(cfg, check_seqs)
    try:
        index = torch.tensor(idx, device=device)
        ref_out, ref_lse = reference(inputs["q"].index_select(0, index), inputs["k_cache"],
                                     inputs["block_table"].index_select(0, index),
                                     inputs["cache_seqlens"].index_select(0, index), D_V, inputs["softmax_scale"],
                                     True)
    except Exception as error:
        ref_out = ref_lse = None
        result["reference_error"] = short_error(error)
    result["checked_sequences"] = idx

    def add_row(impl, variant, ms=None, err_out=None, err_lse=None, ok=None, error=None, note=None):
        row = dict(impl=impl, variant=variant, ms=ms, err_out=err_out, err_lse=err_lse, ok=ok, error=error, note=note)
        if ms:
            row["tflops"] = cfg.flops / (ms * 1e-3) / 1e12
            row["gbps"] = cfg.bytes / (ms * 1e-3) / 1e9
        result["rows"].append(row)
        return row

    for impl in impls:
        if impl == "ours":
            if ours.error:
                add_row("ours", "ours", error=ours.error)
                continue
            if device.type == "cuda" and ours.backend_name(device) != "cuda_sm90" and not ours.allow_reference:
                add_row("ours", "ours", error=f"not timed: backend is {ours.backend_name(device)!r}, not the sm90 "
                                              "kernel (pass --allow-reference-backend to time it anyway)")
                continue
            module = ours
        else:
            module = peers.get(impl)
            if isinstance(module, str):
                add_row(impl, impl, error=module)
                continue
            supported, reason = module.supports(inputs)
            if not supported:
                add_row(impl, impl, note=f"- ({reason})")
                continue
        try:
            variant_sets = [module.make(inp) for inp in all_inputs]
        except Exception as error:
            add_row(impl, impl, error=f"setup: {short_error(error)}")
            log(traceback.format_exc(), debug=True)
            continue
        if impl == "ours":
            try:
                result["schedule_ms"] = timer(rotating([ours.schedule_fn(inp) for inp in all_inputs]))
            except Exception as error:
                result["schedule_error"] = short_error(error)
        for variant in variant_sets[0]:
            timed = rotating([vs[variant][0] for vs in variant_sets])
            check = variant_sets[0][variant][1]
            err_out = err_lse = ok = None
            try:
                out, lse = check()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if ref_out is not None:
                    err_out, err_lse, ok = compare(out, lse, ref_out, ref_lse, idx, dtype)
                del out, lse
            except Exception as error:
                add_row(impl, variant, error=f"run: {short_error(error)}")
                log(traceback.format_exc(), debug=True)
                continue
            try:
                if monitor:
                    monitor.start()
                try:
                    ms = timer(timed)
                finally:
                    clock = monitor.stop() if monitor else {}
            except Exception as error:
                add_row(impl, variant, err_out=err_out, err_lse=err_lse, ok=ok, error=f"timing: {short_error(error)}")
                continue
            add_row(impl, variant, ms, err_out, err_lse, ok).update(clock)
        del variant_sets
    del all_inputs, inputs
    if device.type == "cuda":
        try:  # a fault of an asynchronous launch can surface only here; keep the rows measured before it
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except Exception as error:
            result["error"] = f"after the last implementation: {short_error(error)}"
    return result


# --------------------------------------------------------------------------------------------- report
def best_rows(result):
    """One row per impl: the fastest correct variant (else the fastest, else the error/note row)."""
    by_impl = {}
    for row in result["rows"]:
        by_impl.setdefault(row["impl"], []).append(row)
    best = {}
    for impl, rows in by_impl.items():
        timed = [r for r in rows if r["ms"]]
        good = [r for r in timed if r["ok"] is not False]
        pool = good or timed
        best[impl] = min(pool, key=lambda r: r["ms"]) if pool else rows[0]
    return best


def load_figures():
    """FlashMLA's figures by (b, L, s_q, h_q), and the published figures of other kernels."""
    with open(FIGURES_PATH) as handle:
        figure_data = json.load(handle)
    return {(f["b"], f["L"], f["s_q"], f["h_q"]): f for f in figure_data["flashmla"]}, figure_data.get("published", {})


def figure_for(result, figures):
    if result["group"] != "main" or result["varlen"]:
        return None
    return figures.get((result["b"], result["mean_len"], result["s_q"], result["h_q"]))


def fmt(value, spec, empty="-"):
    return empty if value is None else format(value, spec)


def print_config(result, figures, published, log):
    fig = figure_for(result, figures)
    header = (f"== {result['name']}: b={result['b']} s_q={result['s_q']} h_q={result['h_q']} "
              f"{'varlen' if result['varlen'] else 'equal'} mean={result['mean_len']} max={result['max_len']} "
              f"sum={result['sum_len']}  ({result['bytes'] / 1e9:.3f} GB, {result['flops'] / 1e12:.3f} TFLOP)")
    log(header)
    if result.get("error"):
        log(f"   ERROR {result['error']}")
        return
    sched = result.get("schedule_ms")
    log(f"   schedule (get_mla_metadata): {fmt(sched, '.4f')} ms"
        + (f"  [error {result['schedule_error']}]" if result.get("schedule_error") else "")
        + f"   checked seqs {result['checked_sequences']}   input copies {result.get('input_copies')}"
        + (f"   REFERENCE ERROR {result['reference_error']}" if result.get("reference_error") else ""))
    log(f"   {'impl':<14}{'ms':>9}{'TFLOP/s':>9}{'GB/s':>8}{'vs FlashMLA':>13}{'err(out)':>10}{'err(lse)':>10}"
        f"{'SM MHz':>8}{'W':>5}  note")
    base_ms = fig["flashmla_ms"] if fig else None
    pub = published.get(result.get("published_key") or "") if result.get("published_key") else None
    if pub and pub.get("flashmla_us"):
        base_ms = pub["flashmla_us"] / 1e3
    if fig:
        log(f"   {'FlashMLA*':<14}{fig['flashmla_ms']:>9.3f}{fig['flashmla_tflops']:>9.0f}{fig['flashmla_gbps']:>8.0f}"
            f"{'1.00':>13}{'':>10}{'':>10}  figure from BENCHMARKS.md")
        if fig.get("sglang_triton_ms"):
            ms = fig["sglang_triton_ms"]
            log(f"   {'SGLang*':<14}{ms:>9.3f}{result['flops'] / ms / 1e9:>9.1f}{result['bytes'] / ms / 1e6:>8.0f}"
                f"{fig['flashmla_ms'] / ms:>13.2f}{'':>10}{'':>10}  figure from BENCHMARKS.md (same run as FlashMLA)")
    if pub:
        for label, key in (("FlashMLA*", "flashmla_us"), (pub.get("best_name", "best") + "*", "best_us")):
            if pub.get(key):
                ms = pub[key] / 1e3
                log(f"   {label[:14]:<14}{ms:>9.3f}{result['flops'] / ms / 1e9:>9.0f}{result['bytes'] / ms / 1e6:>8.0f}"
                    f"{base_ms / ms:>13.2f}{'':>10}{'':>10}  published: {pub['note']}")
        if not pub.get("flashmla_us"):
            log(f"   (published: {pub['note']})")
    for row in result["rows"]:
        if row["ms"] is None:
            text = row["error"] or row["note"] or ""
            log(f"   {row['variant']:<14}{'-':>9}{'':>9}{'':>8}{'':>13}{fmt(row['err_out'], '.2e'):>10}"
                f"{fmt(row['err_lse'], '.2e'):>10}  {'ERROR ' if row['error'] and not text.startswith('not run') else ''}{text}")
            continue
        ratio = base_ms / row["ms"] if base_ms else None
        flag = "" if row["ok"] is not False else "WRONG"
        if row["ok"] is None:
            flag = "unchecked"
        log(f"   {row['variant']:<14}{row['ms']:>9.4f}{row['tflops']:>9.1f}{row['gbps']:>8.0f}{fmt(ratio, '.2f'):>13}"
            f"{fmt(row['err_out'], '.2e'):>10}{fmt(row['err_lse'], '.2e'):>10}{fmt(row.get('sm_mhz'), '.0f'):>8}"
            f"{fmt(row.get('power_w'), '.0f'):>5}  {flag}{(' ' + row['error']) if row['error'] else ''}")


def geomean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summarize(results, figures, impls, log):
    summary = {}
    ours = {r["name"]: best_rows(r).get("ours") for r in results}
    ratios, worst = [], None
    for r in results:
        fig = figure_for(r, figures)
        row = ours.get(r["name"])
        if fig and row and row["ms"] and row["ok"] is not False:
            ratio = fig["flashmla_ms"] / row["ms"]
            ratios.append(ratio)
            if worst is None or ratio < worst[0]:
                worst = (ratio, r["name"])
    summary["geomean_ratio_vs_flashmla"] = geomean(ratios)
    summary["configs_vs_flashmla"] = len(ratios)
    summary["configs_below_flashmla"] = sum(1 for x in ratios if x < 1)
    summary["worst_vs_flashmla"] = worst
    mem = [(row["gbps"], name) for name, row in ours.items() if row and row["ms"] and row["ok"] is not False
           and _rows(results, name) <= MEMORY_BOUND_MAX_ROWS]
    comp = [(row["tflops"], name) for name, row in ours.items() if row and row["ms"] and row["ok"] is not False
            and _rows(results, name) >= COMPUTE_BOUND_MIN_ROWS]
    summary["max_gbps_memory_bound"] = max(mem) if mem else None
    summary["max_tflops_compute_bound"] = max(comp) if comp else None
    sched = [r["schedule_ms"] for r in results if r.get("schedule_ms")]
    summary["schedule_ms_median"] = statistics.median(sched) if sched else None
    clocks = {}
    for label, keep in (("memory_bound", lambda rows: rows <= MEMORY_BOUND_MAX_ROWS),
                        ("compute_bound", lambda rows: rows >= COMPUTE_BOUND_MIN_ROWS)):
        mhz = [row["sm_mhz"] for name, row in ours.items() if row and row.get("sm_mhz") and keep(_rows(results, name))]
        clocks[label] = statistics.median(mhz) if mhz else None
    summary["ours_median_sm_mhz"] = clocks
    peers = {}
    for impl in impls:
        if impl == "ours":
            continue
        speedups = []
        for r in results:
            best = best_rows(r)
            mine, theirs = best.get("ours"), best.get(impl)
            if mine and theirs and mine["ms"] and theirs["ms"] and mine["ok"] is not False and theirs["ok"] is not False:
                speedups.append((theirs["ms"] / mine["ms"], r["name"]))
        memory_bound = [s for s, name in speedups if _rows(results, name) <= MEMORY_BOUND_MAX_ROWS]
        peers[impl] = dict(configs=len(speedups), geomean=geomean([s for s, _ in speedups]),
                           min=min(speedups) if speedups else None,
                           memory_bound_configs=len(memory_bound), memory_bound_geomean=geomean(memory_bound))
    summary["peers"] = peers
    wrong = [(r["name"], row["variant"]) for r in results for row in r["rows"] if row["ok"] is False]
    errors = [(r["name"], row["variant"], row["error"]) for r in results for row in r["rows"]
              if row["error"] and not row["error"].startswith("not run")]
    summary["wrong"] = wrong
    summary["errors"] = errors[:50]

    log("")
    log("== summary")
    g = summary["geomean_ratio_vs_flashmla"]
    log(f"   ours vs FlashMLA figures: geomean speed ratio {fmt(g, '.3f')} over {len(ratios)} configs "
        f"(target >= 1.05); below 1.0 on {summary['configs_below_flashmla']}"
        + (f"; worst {worst[0]:.3f} at {worst[1]}" if worst else ""))
    m = summary["max_gbps_memory_bound"]
    c = summary["max_tflops_compute_bound"]
    log(f"   max GB/s, memory-bound (h_q*s_q<=32): {fmt(m and m[0], '.0f')}" + (f" at {m[1]}" if m else "")
        + "   (FlashMLA 2861, target >= 2850)")
    log(f"   max TFLOP/s, compute-bound (h_q*s_q>=128): {fmt(c and c[0], '.1f')}" + (f" at {c[1]}" if c else "")
        + "   (FlashMLA 678, target >= 680)")
    log(f"   schedule (get_mla_metadata) median: {fmt(summary['schedule_ms_median'], '.4f')} ms")
    if any(clocks.values()):
        log(f"   ours, median SM clock while timed: memory-bound {fmt(clocks['memory_bound'], '.0f')} MHz, "
            f"compute-bound {fmt(clocks['compute_bound'], '.0f')} MHz (power-capped GPUs lower it under load)")
    for impl, info in peers.items():
        mn = info["min"]
        log(f"   ours vs {impl}: geomean speedup {fmt(info['geomean'], '.2f')}x over {info['configs']} configs"
            + (f", min {mn[0]:.2f}x at {mn[1]}" if mn else "")
            + (f"; memory-bound (h_q*s_q<=32) {fmt(info['memory_bound_geomean'], '.2f')}x over "
               f"{info['memory_bound_configs']}" if info["memory_bound_configs"] else ""))
    extras = [r for r in results if r["group"] == "extra"]
    if extras:
        log("   extra workloads (ours us / published FlashMLA us / best published us):")
        for r in extras:
            row = ours.get(r["name"])
            pub = r.get("published") or {}
            log(f"     {r['name']:<34} {fmt(row and row['ms'] and row['ms'] * 1e3, '.1f'):>8}"
                f" {fmt(pub.get('flashmla_us'), '.0f'):>6} {fmt(pub.get('best_us'), '.0f'):>6}")
    log(f"   incorrect results: {len(wrong)}" + (f" {wrong[:10]}" if wrong else ""))
    log(f"   errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    return summary


def _rows(results, name):
    r = next(r for r in results if r["name"] == name)
    return r["s_q"] * r["h_q"]


def plot(results, figures, path, log):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as error:
        log(f"plot skipped: matplotlib unavailable ({error!r})")
        return
    shown = [r for r in results if r["rows"]]
    if not shown:
        return
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 0.28 * len(shown)), 9), sharex=True)
    x = list(range(len(shown)))
    impls = sorted({row["impl"] for r in shown for row in r["rows"]})
    for ax, key, fkey, label in ((axes[0], "gbps", "flashmla_gbps", "GB/s"),
                                 (axes[1], "tflops", "flashmla_tflops", "TFLOP/s")):
        fx = [i for i, r in enumerate(shown) if figure_for(r, figures)]
        ax.scatter(fx, [figure_for(shown[i], figures)[fkey] for i in fx], marker="_", s=200, c="k",
                   label="FlashMLA (BENCHMARKS.md)", zorder=3)
        for impl in impls:
            xs, ys = [], []
            for i, r in enumerate(shown):
                row = best_rows(r).get(impl)
                if row and row["ms"] and row["ok"] is not False:
                    xs.append(i)
                    ys.append(row[key])
            if xs:
                ax.plot(xs, ys, "o", markersize=4, label=impl)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].set_xticks(x)
    axes[1].set_xticklabels([r["name"] for r in shown], rotation=90, fontsize=6)
    fig.suptitle("MLA decode (bf16, h_kv=1, d=576, dv=512, page 64)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"plot written to {path}")


# ----------------------------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small subset of the tables")
    parser.add_argument("--configs", choices=("main", "extra", "all"), default="all")
    parser.add_argument("--impls", default=",".join(ALL_IMPLS), help=f"comma list of {ALL_IMPLS}")
    parser.add_argument("--only", default="",
                        help="run only configs whose name contains one of these comma-separated substrings")
    parser.add_argument("--json", default=None, help="write results to this path")
    parser.add_argument("--plot", default=None, help="write a PNG plot to this path")
    parser.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-seqs", type=int, default=4, help="sequences checked against the reference")
    parser.add_argument("--warmup-ms", type=float, default=25)
    parser.add_argument("--rep-ms", type=float, default=100)
    parser.add_argument("--rounds", type=int, default=1,
                        help="passes over the whole config list; each config reports the median pass time "
                             "(scripts/bench_rounds.py says why)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny configs, plumbing only")
    parser.add_argument("--allow-reference-backend", action="store_true",
                        help="time 'ours' on CUDA even when it runs the PyTorch reference, not the kernel")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")

    def log(text, debug=False):
        if debug and not args.verbose:
            return
        print(text, flush=True)

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type != "cuda" and not args.dry_run:
        log("no CUDA device: running the --dry-run configs on CPU instead")
        args.dry_run = True
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [i for i in impls if i not in ALL_IMPLS]
    if unknown:
        parser.error(f"unknown impls {unknown}; choose from {ALL_IMPLS}")

    figures, published = load_figures()

    if args.dry_run:
        configs = dry_configs()
    else:
        configs = []
        if args.configs in ("main", "all"):
            configs += main_configs(args.quick, args.seed)
        if args.configs in ("extra", "all"):
            configs += extra_configs(args.quick)
    if args.only:
        wanted = [part for part in args.only.split(",") if part]
        configs = [c for c in configs if any(part in c.name for part in wanted)]

    ours = Ours(args.allow_reference_backend)
    peers = {}
    for impl in impls:
        if impl in PEER_MODULES:
            try:
                module = importlib.import_module(PEER_MODULES[impl])
                ok, reason = module.available()
                if not ok:  # a peer not set up here ("not run: ...") is not an error
                    reason = reason if str(reason).startswith("not run") else f"unavailable: {reason}"
                peers[impl] = module if ok else reason
            except Exception as error:
                peers[impl] = f"unavailable: {short_error(error)}"
    reference, reference_name = load_reference()
    timer = Timer(device, args.warmup_ms, args.rep_ms)
    # SM clock and power during each timing: compute-bound configs run at the power cap, so their figures move
    # with the clock the GPU can hold (scripts/gpu_monitor.py).
    monitor = GpuMonitor.open(device) if device.type == "cuda" else None

    meta = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                torch=torch.__version__, python=platform.python_version(), dtype=args.dtype,
                backend=ours.backend_name(device), reference=reference_name, timer=timer.kind,
                impls=impls, peers={k: (v if isinstance(v, str) else f"ok ({v.available()[1]})") for k, v in peers.items()},
                rounds=args.rounds, argv=sys.argv[1:], started=time.strftime("%Y-%m-%d %H:%M:%S"))
    try:
        import triton
        meta["triton"] = triton.__version__
    except Exception:
        meta["triton"] = None
    log("# hf_flashmla decode benchmark (BENCHMARKS.md protocol)")
    for key in ("device", "torch", "triton", "dtype", "backend", "reference", "timer", "peers"):
        log(f"#   {key}: {meta[key]}")
    if "ours" in impls and meta["backend"] != "cuda_sm90" and device.type == "cuda":
        log(f"#   WARNING: ours runs on backend {meta['backend']!r}, not the sm90 CUDA kernel")
    log(f"#   {len(configs)} configs; FLOPs = 2*s_q*h_q*sum(len)*(576+512); "
        f"bytes = 2*(sum(len)*576 + b*s_q*h_q*(576+512)); ratio = FlashMLA ms / ms")
    if monitor:
        log("#   SM MHz, W: median NVML readings during each timing (the driver averages power over about a second, so a "
            "short timing's W mostly shows what ran before it)")

    passes = []
    for round_index in range(args.rounds):
        if args.rounds > 1:
            log(f"# pass {round_index + 1} of {args.rounds}")
        pass_results = []
        for n, cfg in enumerate(configs):
            try:  # the same seed in every pass: the same inputs
                result = run_config(cfg, pass_order(impls, round_index), peers, ours, reference, timer, device,
                                    dtype, args.seed + n, args.check_seqs, figures, log, monitor)
            except Exception as error:  # never let one config end the run
                result = dict(name=cfg.name, group=cfg.group, b=cfg.b, mean_len=cfg.mean_len, s_q=cfg.s_q,
                              h_q=cfg.h_q, varlen=cfg.varlen, sum_len=cfg.sum_len, max_len=max(cfg.lengths),
                              flops=cfg.flops, bytes=cfg.bytes, rows=[], error=short_error(error))
                log(traceback.format_exc(), debug=True)
            pass_results.append(result)
            if args.rounds > 1:
                log(round_line(result, round_index, args.rounds))
        passes.append(pass_results)
    if args.rounds > 1:
        log(f"# per config and implementation: the median of the {args.rounds} passes' times")
    results = merge_rounds(passes)
    for cfg, result in zip(configs, results):
        result["published_key"] = cfg.published_key
        result["published"] = published.get(cfg.published_key) if cfg.published_key else None
        result["flashmla_figure"] = figure_for(result, figures)
        print_config(result, figures, published, log)

    summary = summarize(results, figures, impls, log)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(meta=meta, summary=summary, configs=results), handle, indent=1, default=str)
        log(f"json written to {args.json}")
    if args.plot:
        plot(results, figures, args.plot, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
