"""End-to-end generate() benchmark on a whole real-shaped model (docs/benchmarks.md, "End to end").

One model with random weights is built on the device from a preset config (benchmarks/generate_models.py). For
each case (prompt length x batch) every implementation runs in the same process, one after the other:
  flash_mla     attn_implementation="flash_mla" (hf_flashmla's latent paged cache)
  flash_mla_fp8 the same with the FP8 latent cache (generate(cache_config={"kv_cache_dtype": "fp8_e4m3"}): FlashMLA's
                FP8 layout, 656 B per token and layer)
  sdpa          stock sdpa with the cache generate() creates
  sdpa_static   stock sdpa with cache_implementation="static": generate() then compiles the decode step
                (torch.compile, CUDA graphs); eager / eager_static likewise
Each run is greedy with min_new_tokens = max_new_tokens = --new-tokens. Per run:
  first call +s     time of a first generate() minus a second identical one: compile / capture cost (flash_mla
                    captures its decode steps as CUDA graphs; --flash-mla-kwargs disable_compile=True runs eager)
  TTFT              second call: start -> first logits (a syncing logits processor takes the timestamps)
  decode ms/step    second call: first logits -> generate() returns, over new_tokens - 1 steps (the generate() loop
                    included; the device is synchronised only after the prefill and at the end, so a host that
                    runs a step ahead of the device keeps that overlap, as it does for users)
  GPU busy ms/step  a third identical call under torch.profiler: summed device time of the decode steps' kernels
  peak GB           torch.cuda.max_memory_allocated over the second call, weights included
Out of memory is a result ("OOM"): memory is freed and the next run goes on. The table is printed last and every
printed figure is also in the JSON (rewritten after each run).

Usage (repo root):
  python -m benchmarks.bench_generate --preset deepseek-v2-lite --cases 4Kx8,16Kx8,32Kx1,128Kx1 --json e2e.json
  python -m benchmarks.bench_generate --preset glm-4.7-flash --layers 24 --cases 4Kx8,32Kx1
  python -m benchmarks.bench_generate --flash-mla-kwargs prefill_chunk_size=4096 --cases 32Kx8
  python -m benchmarks.bench_generate --impls flash_mla,flash_mla_fp8,sdpa --cases 4Kx8,32Kx1     # both latent caches
  python -m benchmarks.bench_generate --impls flash_mla_fp8 --cases 160Kx8 --single-call   # beyond the bf16 cache
  python -m benchmarks.bench_generate --smoke        # 2-layer model, small cases, seconds on a CPU
Exit status: 0 when every run finished or ran out of memory; 1 when a run failed or an implementation was
unavailable; 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import ast
import gc
import json
import platform
import re
import sys
import time

import torch

from benchmarks import generate_models, generate_report
from benchmarks.generate_timing import StepClock, profiled_decode_busy, synchronize
from hf_flashmla.cli import runtime as rt

DEFAULT_CASES = "4Kx8,16Kx8,32Kx1,128Kx1"
DEFAULT_IMPLS = "flash_mla,sdpa,sdpa_static"
SMOKE_CASES = "64x2,40x1"
KNOWN_ATTNS = ("flash_mla", "sdpa", "eager")


def parse_cases(text: str) -> list[tuple[int, int]]:
    """'4Kx8,32Kx1,100x2' -> [(4096, 8), (32768, 1), (100, 2)]: prompt tokens (K = 1024) x batch."""
    cases = []
    for item in filter(None, text.replace(" ", "").split(",")):
        match = re.fullmatch(r"(\d+)([kK]?)x(\d+)", item)
        if not match:
            raise ValueError(f"--cases: {item!r} is not CONTEXTxBATCH (e.g. 4Kx8, 100x2)")
        context = int(match.group(1)) * (1024 if match.group(2) else 1)
        batch = int(match.group(3))
        if context < 1 or batch < 1:
            raise ValueError(f"--cases: {item!r}: context and batch must be >= 1")
        cases.append((context, batch))
    if not cases:
        raise ValueError("--cases: no case given")
    return cases


FP8_IMPL = "flash_mla_fp8"


def parse_impl(name: str) -> tuple[str, bool]:
    """'sdpa_static' -> ('sdpa', True): the attention implementation and whether the cache is static
    (flash_mla_fp8 -> ('flash_mla', False): the FP8 latent cache is measure()'s part)."""
    if name == FP8_IMPL:
        return "flash_mla", False
    attn, static = (name[: -len("_static")], True) if name.endswith("_static") else (name, False)
    if attn not in KNOWN_ATTNS or (static and attn == "flash_mla"):
        choices = ", ".join(KNOWN_ATTNS + (FP8_IMPL, "sdpa_static", "eager_static"))
        raise ValueError(f"--impls: unknown implementation {name!r} (choose from {choices})")
    return attn, static


def parse_kwargs(text: str, flag: str) -> dict:
    """'prefill_chunk_size=4096,output_scores=False' (values as Python literals, else strings) or a JSON object."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"{flag}: expected a JSON object")
        return value
    out = {}
    for item in text.split(","):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag}: {item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_generate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", default="deepseek-v2-lite", choices=sorted(generate_models.PRESETS))
    p.add_argument("--layers", type=int, default=None, help="cut the model to this many decoder layers")
    p.add_argument("--cases", default=None, help=f"CONTEXTxBATCH list (default {DEFAULT_CASES})")
    p.add_argument("--impls", default=DEFAULT_IMPLS,
                   help="comma list of flash_mla, flash_mla_fp8, sdpa, sdpa_static, eager, eager_static")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run (min = max)")
    p.add_argument("--generate-kwargs", default="", help="KEY=VALUE,... passed to every generate() call")
    p.add_argument("--flash-mla-kwargs", default="", help="KEY=VALUE,... passed to flash_mla's generate() calls only "
                                                           "(e.g. prefill_chunk_size=4096)")
    p.add_argument("--experts-implementation", default=None,
                   help="transformers' experts implementation for MoE layers (e.g. eager, grouped_mm, batched_mm)")
    p.add_argument("--no-profile", action="store_true", help="skip the profiled call (no GPU busy figure)")
    p.add_argument("--single-call", action="store_true",
                   help="one generate() per run (no first-call figure, no profiled call): for the long prefills")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="start no run after this many seconds (the rest: 'skipped: time budget')")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto = bfloat16 on CUDA, float32 on the CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true",
                   help=f"the 2-layer smoke preset, cases {SMOKE_CASES}, 4 new tokens unless given: a plumbing check")
    p.add_argument("--json", default=None, help="write meta + rows here (rewritten after every run)")
    p.add_argument("--plot", default=None, help="write a PNG of decode ms/step per case here")
    args = p.parse_args(argv)
    given = set(argv if argv is not None else sys.argv[1:])
    if args.smoke:
        args.preset = "smoke"
        args.cases = args.cases or SMOKE_CASES
        if "--new-tokens" not in given:
            args.new_tokens = 4
    try:
        args.case_list = parse_cases(args.cases or DEFAULT_CASES)
        args.impl_list = [i for i in args.impls.replace(" ", "").split(",") if i]
        if not args.impl_list:
            raise ValueError("--impls: no implementation given")
        for impl in args.impl_list:
            parse_impl(impl)
        args.gen_kwargs = parse_kwargs(args.generate_kwargs, "--generate-kwargs")
        args.flash_kwargs = parse_kwargs(args.flash_mla_kwargs, "--flash-mla-kwargs")
    except ValueError as error:
        p.error(str(error))
    if args.new_tokens < 2:
        p.error("--new-tokens: at least 2 (the first token comes from the prefill)")
    if args.layers is not None and args.layers < 1:
        p.error(f"--layers: must be >= 1, got {args.layers}")
    return args


def make_prompt(vocab_size, context, batch, device, seed):
    generator = torch.Generator().manual_seed(seed + 7919 * context + batch)
    ids = torch.randint(1, vocab_size, (batch, context), generator=generator)  # 0 is the pad id
    return ids.to(device), torch.ones(batch, context, dtype=torch.long, device=device)


def release(model, device, static: bool):
    """Frees what a run left: its cache and outputs, flash_mla's captured decode graphs and their pools, and for a
    compiled static run dynamo's graphs, so that the next run starts cold and its peak memory is its own."""
    if static:
        torch._dynamo.reset()
    try:
        from hf_flashmla.transformers_integration import decode_graphs
    except ImportError:  # an hf_flashmla without decode graphs
        decode_graphs = None
    if decode_graphs is not None:
        gc.collect()  # the last run's cache must be gone for its arena to be free
        decode_graphs.release(model)
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()


def measure(model, impl, context, batch, args, device) -> dict:
    """One implementation on one case: first call, timed call, profiled call (module docstring)."""
    attn, static = parse_impl(impl)
    row = {"case": generate_report.case_label(context, batch), "context": context, "batch": batch, "impl": impl,
           "attn_implementation": attn, "static_cache": static, "new_tokens": args.new_tokens, "status": "ok"}
    reason = rt.use_attn(model, attn)
    if reason:
        row.update(status="unavailable", note=reason)
        return row
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, num_beams=1,
                  return_dict_in_generate=True, **args.gen_kwargs)
    if attn == "flash_mla":
        kwargs.update(args.flash_kwargs)
        if impl == FP8_IMPL:
            kwargs["cache_config"] = {"kv_cache_dtype": "fp8_e4m3"}
            row["kv_cache_dtype"] = "fp8_e4m3"
    if static:
        kwargs["cache_implementation"] = "static"
    row["generate_kwargs"] = {k: v for k, v in kwargs.items() if k != "return_dict_in_generate"}
    ids, mask = make_prompt(model.config.vocab_size, context, batch, device, args.seed)

    def generate(clock):
        return model.generate(input_ids=ids, attention_mask=mask, logits_processor=[clock], **kwargs)

    out = None
    try:
        release(model, device, static)
        first_s = None
        if not args.single_call:
            cold = StepClock(device)
            cold.begin()
            out = generate(cold)
            synchronize(device)
            first_s = time.perf_counter() - cold.start
            del out
            out = None
            gc.collect()  # the first call's cache must be gone for the second to reuse its captured graphs
        rt.reset_peak(device)
        clock = StepClock(device)
        clock.begin()
        out = generate(clock)
        clock.finish()
        second_s = clock.end - clock.start
        peak = rt.peak_bytes(device)
        cache = rt.output_cache(out)
        generated = out.sequences.shape[1] - context
        row.update(first_call_s=first_s, second_call_s=second_s,
                   first_call_extra_s=None if first_s is None else first_s - second_s,
                   ttft_s=clock.ttft_s, decode_steps=clock.decode_steps, generated=generated,
                   peak_gb=None if peak is None else peak / 1e9, cache_class=type(cache).__name__,
                   cached_tokens=rt.cache_seq_length(cache))
        used = rt.kv_cache_used_bytes(cache)
        if used is not None:
            row["kv_cache_used_gb"] = used / 1e9
        if clock.decode_s:
            row["decode_ms_per_step"] = clock.decode_s * 1e3 / clock.decode_steps
            row["decode_tokens_per_s"] = batch * clock.decode_steps / clock.decode_s
        if generated != args.new_tokens:
            row["note"] = f"generated {generated} tokens, not {args.new_tokens}"
        del out, cache
        out = None
        gc.collect()
        if device.type == "cuda" and not args.no_profile and not args.single_call:
            row.update(profiled_decode_busy(generate, device))
    except Exception as error:  # noqa: BLE001  (every failure of one run is that run's result)
        row["status"] = "OOM" if rt.is_oom(error) else "error"
        row["note"] = short_error(error)
    del out
    release(model, device, static)
    return row


def short_error(error) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= 200 else text[:197] + "..."


def run_all(model, args, device, report, t0) -> list[dict]:
    rows = report["rows"]
    for context, batch in args.case_list:
        for impl in args.impl_list:
            if args.time_budget_s is not None and time.perf_counter() - t0 > args.time_budget_s:
                row = {"case": generate_report.case_label(context, batch), "context": context, "batch": batch,
                       "impl": impl, "status": "skipped", "note": "time budget"}
            else:
                row = measure(model, impl, context, batch, args, device)
            rows.append(row)
            print(generate_report.row_line(row), flush=True)
            report["meta"]["elapsed_s"] = time.perf_counter() - t0
            generate_report.write_json(args.json, report)
    return rows


def main(argv=None) -> int:
    t0 = time.perf_counter()
    args = parse_args(argv)
    try:
        device = rt.resolve_device("cpu" if args.smoke and args.device == "auto" and not torch.cuda.is_available()
                                   else args.device)
        dtype = rt.resolve_dtype(args.dtype, device)
        config = generate_models.make_config(args.preset, layers=args.layers)
    except ValueError as error:
        print(f"bench_generate: {error}", file=sys.stderr)
        return 2
    import transformers

    full_layers = generate_models.PRESETS[args.preset].fields["num_hidden_layers"]
    layers_text = f"{config.num_hidden_layers} of {full_layers} layers"
    print(f"building {args.preset} ({layers_text}) on {device}, {rt.dtype_name(dtype)} ...", flush=True)
    # Dynamo keeps one compiled graph per shape; every case of a static run is a new shape.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    model = generate_models.build_model(config, dtype=dtype, device=device, seed=args.seed,
                                        experts_implementation=args.experts_implementation)
    meta = {
        "argv": sys.argv[1:] if argv is None else list(argv), "preset": args.preset,
        "preset_description": generate_models.PRESETS[args.preset].description,
        "layers": config.num_hidden_layers, "preset_layers": full_layers, "model": generate_models.describe(config),
        "parameters_b": generate_models.parameter_count(model) / 1e9,
        "weight_gb": generate_models.weight_bytes(model) / 1e9, "device": rt.device_label(device),
        "dtype": rt.dtype_name(dtype), "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "flash_mla_backend": rt.flash_mla_backend(device),
        "experts_implementation": args.experts_implementation, "impls": args.impl_list,
        "cases": [generate_report.case_label(c, b) for c, b in args.case_list], "new_tokens": args.new_tokens,
        "generate_kwargs": args.gen_kwargs, "flash_mla_kwargs": args.flash_kwargs,
        "timing": "per run: a first generate(), then an identical one timed by a syncing logits processor (TTFT, "
                  "decode = first -> last logits over new_tokens - 1 steps), then one under torch.profiler (GPU busy "
                  "= device time after the first logits / decode steps); first call +s = first - second",
    }
    report = {"meta": meta, "rows": []}
    title = (f"generate(): {args.preset} ({layers_text}, {meta['parameters_b']:.1f} B params), "
             f"{rt.dtype_name(dtype)}, {args.new_tokens} new tokens greedy, {meta['device']}, "
             f"transformers {transformers.__version__}")
    print(title, flush=True)
    rows = run_all(model, args, device, report, t0)
    generate_report.add_comparisons(rows)
    report["table"] = generate_report.markdown_table(rows)
    failed = [r for r in rows if r["status"] not in ("ok", "OOM", "skipped")]
    report["meta"]["elapsed_s"] = time.perf_counter() - t0
    report["title"] = title
    report["failed_runs"] = [f"{r['case']} {r['impl']}: {status_text}" for r in failed
                             for status_text in [generate_report.status_text(r)]]
    generate_report.write_json(args.json, report)
    if args.plot:
        try:
            print(f"wrote {generate_report.write_plot(rows, args.plot, title)}")
        except ImportError as error:
            print(f"plot not written: {error}")
    if args.json:
        print(f"wrote {args.json}")
    print(f"\n{title}\n")
    print(report["table"])
    for line in report["failed_runs"]:
        print(f"FAILED {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
