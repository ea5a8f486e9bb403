#!/usr/bin/env python3
"""End-to-end generate() benchmark (BENCHMARKS.md, "End to end"): flash_mla against stock sdpa and eager.

Model: DeepSeek-V3 attention shapes (hidden 7168, 128 heads, q_lora_rank 1536, kv_lora_rank 512, qk_nope 128,
qk_rope 64, v_head 128), a few layers (default 2), every layer a dense MLP of 4096, vocabulary 4096, random
weights, bf16, built in memory (scripts/e2e_model.py). One model; each run switches it with
set_attn_implementation. flash_mla runs with its latent paged cache, sdpa and eager with Transformers'
default cache (whatever generate() creates for each).

Per (attention, prompt length, batch), one greedy generate() of --new-tokens tokens with a timing logits
processor (scripts/e2e_timing.py) gives:
- TTFT: generate() start -> the first logits (prefill + generate()'s setup);
- decode ms/step and tokens/s: first -> last logits, i.e. the decode steps alone, generate() loop included;
- peak GPU memory: torch.cuda.max_memory_allocated over that generate() (reset before; weights included);
- KV-cache bytes: counted on the cache object generate() returns (allocated: a paged pool counts whole;
  per token and layer: the stored tokens alone, where the cache reports them, e.g. used_bytes());
- then --overhead-steps bare decode forwards on that cache (no generate() loop): bare forward ms/step and
  host ms/step, so the table shows how much of each generate() step is the loop's own overhead.
Out-of-memory is a result row ("OOM"); memory is freed and the next run starts.

Order: the target configs first (16K x 8, 32K x 1 for all; 32K x 8 and 128K x 1), then the rest of the grid
from small to large, so that a --time-budget-s cut drops the least important rows. Stock configs that
cannot fit (attention tensors of the prefill alone exceed the GPU) are skipped unless --all.

Usage (GPU machine, repo root):
  python scripts/bench_generate.py --json e2e.json --plot-prefix e2e        # main table, ~4-6 min on H100
  python scripts/bench_generate.py --quick                                  # 32 new tokens, batches 1 and 8
  python scripts/bench_generate.py --targets-only                           # issue 5's four configs
  python scripts/bench_generate.py --device cpu --dtype float32 --preset tiny --contexts 32,64 \\
      --batches 1,2 --long-contexts '' --new-tokens 4                       # CPU plumbing check
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(SCRIPTS)
for _path in (REPO_ROOT, SCRIPTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import e2e_model  # noqa: E402
import e2e_report  # noqa: E402
import e2e_runtime as rt  # noqa: E402
from e2e_timing import StepClock, time_bare_decode  # noqa: E402

ATTNS = ("flash_mla", "sdpa", "eager")
TARGETS = ((16384, 8), (32768, 1))  # issue 5: >= 10x best stock decode tokens/s here
CAPABILITY = ((32768, 8), (131072, 1))  # issue 5: flash_mla runs these, stock cannot


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.replace(" ", "").split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--attn", default=",".join(ATTNS), help="comma list of attention implementations")
    p.add_argument("--contexts", default="1024,4096,16384,32768", help="prompt lengths (tokens)")
    p.add_argument("--batches", default="1,8,32", help="batch sizes")
    p.add_argument("--long-contexts", default="131072", help="extra prompt lengths run at batch 1 only")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens generated per run (greedy)")
    p.add_argument("--overhead-steps", type=int, default=16,
                   help="bare decode forwards timed after each run (0: skip the overhead measurement)")
    p.add_argument("--quick", action="store_true", help="32 new tokens, batches 1 and 8, 8 overhead steps")
    p.add_argument("--targets-only", action="store_true",
                   help="only issue 5's configs: 16K x 8, 32K x 1, 32K x 8, 128K x 1")
    p.add_argument("--all", action="store_true", help="also try stock configs predicted to run out of memory")
    p.add_argument("--time-budget-s", type=float, default=420.0,
                   help="start no run after this many seconds from launch (rows left: 'skipped: time budget')")
    p.add_argument("--preset", default="deepseek-v3", choices=sorted(e2e_model.PRESETS))
    p.add_argument("--layers", type=int, default=None, help="decoder layers (preset: 2)")
    p.add_argument("--intermediate", type=int, default=None, help="dense MLP width (preset)")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size (preset)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto = bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generate-kwargs", default="{}", help="JSON dict passed to every generate() call")
    p.add_argument("--progress", default="auto", choices=("auto", "bar", "lines", "none"),
                   help="auto: tqdm bars on a terminal, one line per run otherwise")
    p.add_argument("--json", default=None, help="write meta + rows here (rewritten after every run)")
    p.add_argument("--plot-prefix", default=None, help="write PREFIX_tokens_per_s.png and PREFIX_memory.png")
    args = p.parse_args(argv)
    if args.quick:
        args.new_tokens, args.batches, args.overhead_steps = 32, "1,8", min(args.overhead_steps, 8)
    try:
        args.attns = [a for a in args.attn.split(",") if a]
        args.context_list, args.batch_list = int_list(args.contexts), int_list(args.batches)
        args.long_list = int_list(args.long_contexts)
        args.gen_kwargs = json.loads(args.generate_kwargs)
    except ValueError as error:
        p.error(f"bad list or JSON argument: {error}")
    if not isinstance(args.gen_kwargs, dict):
        p.error("--generate-kwargs: expected a JSON object")
    if args.new_tokens < 2:
        p.error("--new-tokens: at least 2 (one prefill token and one decode step)")
    if not args.attns or not args.context_list or not args.batch_list:
        p.error("--attn, --contexts and --batches must each name at least one value")
    for flag, values in (("--contexts", args.context_list), ("--batches", args.batch_list),
                         ("--long-contexts", args.long_list)):
        if min(values, default=1) < 1:
            p.error(f"{flag}: every value must be >= 1, got {min(values)}")
    for flag in ("layers", "intermediate", "vocab"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag}: must be >= 1, got {getattr(args, flag)}")
    if args.overhead_steps < 0:
        p.error(f"--overhead-steps: must be >= 0 (0: skip the overhead measurement), got {args.overhead_steps}")
    if args.time_budget_s < 0:
        p.error(f"--time-budget-s: must be >= 0, got {args.time_budget_s:g}")
    return args


# ----------------------------------------------------------------------------------------------- planning
def plan(args) -> list[tuple[str, int, int]]:
    grid = [(c, b) for c in args.context_list for b in args.batch_list] + [(c, 1) for c in args.long_list]
    grid = list(dict.fromkeys(grid))
    if args.targets_only:
        grid = list(TARGETS + CAPABILITY)
    first = [cb for cb in TARGETS + CAPABILITY if cb in grid]
    rest = sorted((cb for cb in grid if cb not in first), key=lambda cb: (cb[0] * cb[1], cb[0]))
    return [(attn, c, b) for c, b in first + rest for attn in args.attns]


def certain_oom(attn, context, batch, config, dtype, total_mem) -> str | None:
    """Why a stock run cannot fit, from tensors that must coexist during its prefill; None if it may fit.

    Both stock paths hold, per layer, q [B,S,H,nope+rope], kv_b_proj's output [B,S,H,nope+v] and the
    expanded keys [B,S,H,nope+rope]; eager adds the score matrix [B,H,S,S] in the dtype and in float32."""
    if attn not in rt.STOCK_ATTN or total_mem is None:
        return None
    size = torch.finfo(dtype).bits // 8
    heads, qk = config.num_attention_heads, config.qk_nope_head_dim + config.qk_rope_head_dim
    need = batch * context * heads * (2 * qk + config.qk_nope_head_dim + config.v_head_dim) * size
    if attn == "eager":
        need += batch * heads * context * context * (size + 4)
    if need > total_mem:
        return f"certain OOM: prefill needs >= {need / 1e9:.0f} GB of attention tensors (--all tries it)"
    return None


# ----------------------------------------------------------------------------------------------- running
class Progress:
    """tqdm bars on a terminal (outer: runs, inner: decode steps); plain lines in a log."""

    def __init__(self, mode, total):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.outer, self.inner = mode, None, None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.tqdm = tqdm
            self.outer = tqdm(total=total, desc="runs", position=0)

    def start(self, label, steps):
        if self.mode == "bar":
            self.outer.set_description_str(label)
            self.inner = self.tqdm(total=steps, desc="tokens", position=1, leave=False)
        elif self.mode == "lines":
            print(f"... {label}", flush=True)

    def step(self, n):
        if self.inner is not None:
            self.inner.update(n - self.inner.n)

    def done(self, line):
        if self.mode == "bar":
            if self.inner is not None:
                self.inner.close()
                self.inner = None
            self.outer.update(1)
            self.outer.write(line)
        elif self.mode == "lines":
            print(line, flush=True)

    def close(self):
        if self.outer is not None:
            self.outer.close()


def make_prompt(config, context, batch, device, seed):
    generator = torch.Generator().manual_seed(seed + 7919 * context + batch)
    ids = torch.randint(1, config.vocab_size, (batch, context), generator=generator)  # 0 is the pad id
    return ids.to(device), torch.ones(batch, context, dtype=torch.long, device=device)


def warm_up(model, args, device):
    """One short generate() per attention implementation (kernels, cuBLAS handles, lazy imports), with a
    prompt long enough to take the long-prefill path too, so the first measured row's TTFT is not a cold start."""
    length = min(1024, max(args.context_list + args.long_list))
    ids, mask = make_prompt(model.config, length, 2, device, args.seed)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, **args.gen_kwargs)
    rt.synchronize(device)


def measure(model, attn, context, batch, args, device, progress) -> dict:
    row = {"attn": attn, "context": context, "batch": batch, "new_tokens": args.new_tokens, "status": "ok"}
    clock = StepClock(device, on_step=progress.step)
    out = cache = None
    try:
        ids, mask = make_prompt(model.config, context, batch, device, args.seed)
        rt.free_memory(device)
        rt.reset_peak(device)
        calls_before = rt.flash_mla_call_counts()
        clock.begin()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=False,
                             logits_processor=[clock], return_dict_in_generate=True, **args.gen_kwargs)
        rt.synchronize(device)
        total = time.perf_counter() - clock.start
        peak = rt.peak_bytes(device)
        if attn == "flash_mla":
            row["flash_mla_calls"] = rt.count_delta(calls_before, rt.flash_mla_call_counts())
        cache = rt.output_cache(out)
        generated = out.sequences.shape[1] - context
        kv_bytes, kv_method = rt.kv_cache_bytes(cache)
        used_bytes = rt.kv_cache_used_bytes(cache)
        cached_tokens = rt.cache_seq_length(cache)
        row.update(
            generated=generated, ttft_s=clock.ttft_s, decode_steps=clock.decode_steps, decode_s=clock.decode_s,
            total_s=total, peak_gb=None if peak is None else peak / 1e9, cache_class=type(cache).__name__,
            kv_bytes=kv_bytes, kv_mb=None if kv_bytes is None else kv_bytes / 1e6, kv_bytes_method=kv_method,
            kv_used_bytes=used_bytes, cached_tokens=cached_tokens,
        )
        if clock.decode_s:
            row["decode_ms_per_step"] = clock.decode_s * 1e3 / clock.decode_steps
            row["decode_tok_s"] = batch * clock.decode_steps / clock.decode_s
        if kv_bytes and cached_tokens:
            stored = used_bytes if used_bytes is not None else kv_bytes
            row["kv_bytes_per_token_layer"] = stored / (batch * cached_tokens * model.config.num_hidden_layers)
        if generated != args.new_tokens:
            row["note"] = f"generated {generated} tokens, not {args.new_tokens}"
        if args.overhead_steps > 0 and cache is not None:
            row.update(time_bare_decode(model, cache, out.sequences[:, -1], args.overhead_steps, device))
    except Exception as error:  # noqa: BLE001  (every failure of one run is that run's result)
        row["status"] = "OOM" if rt.is_oom(error) else "error"
        row["note"] = _short(error)
    del out, cache, clock
    rt.free_memory(device)
    return row


def _short(error) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


def run_all(model, runs, args, device, meta, t0):
    total_mem = rt.total_memory(device)
    progress = Progress(args.progress, len(runs))
    rows, unavailable, warmed = [], {}, set()
    for attn, context, batch in runs:
        label = f"{attn} ctx {context} x b {batch}"
        row = {"attn": attn, "context": context, "batch": batch, "new_tokens": args.new_tokens}
        if attn not in unavailable:
            unavailable[attn] = rt.use_attn(model, attn)
        skip = None if args.all else certain_oom(attn, context, batch, model.config, model.dtype, total_mem)
        if unavailable[attn]:
            row.update(status="unavailable", note=unavailable[attn])
        elif skip:
            row.update(status="skipped", note=skip)
        elif time.perf_counter() - t0 > args.time_budget_s:
            row.update(status="skipped", note="time budget")
        else:
            progress.start(label, args.new_tokens)
            rt.use_attn(model, attn)
            if attn not in warmed:
                try:
                    warm_up(model, args, device)
                    warmed.add(attn)
                except Exception as error:  # noqa: BLE001  (a failing implementation is reported, not fatal)
                    unavailable[attn] = f"warm-up failed: {_short(error)}"
                    rt.free_memory(device)
                    row.update(status="error", note=unavailable[attn])
            if attn in warmed:
                row = measure(model, attn, context, batch, args, device, progress)
        rows.append(row)
        progress.done(e2e_report.row_line(row))
        meta["elapsed_s"] = time.perf_counter() - t0
        e2e_report.write_json(args.json, meta, rows)
    progress.close()
    return rows


def main(argv=None) -> int:
    t0 = time.perf_counter()
    args = parse_args(argv)
    try:
        device = rt.resolve_device(args.device)
        dtype = rt.resolve_dtype(args.dtype, device)
    except ValueError as error:
        print(f"bench_generate: {error}", file=sys.stderr)
        return 2
    import transformers

    max_len = max(args.context_list + args.long_list) + args.new_tokens + args.overhead_steps + 256
    config = e2e_model.deepseek_v3_config(args.preset, max_positions=max_len, num_hidden_layers=args.layers,
                                          intermediate_size=args.intermediate, vocab_size=args.vocab)
    print(f"building {args.preset} model ({e2e_model.describe(config)}) on {device}, {rt.dtype_name(dtype)}",
          flush=True)
    model = e2e_model.build_random_model(config, dtype=dtype, device=device, seed=args.seed)
    runs = plan(args)
    meta = {
        "argv": sys.argv[1:] if argv is None else list(argv),
        "device": rt.device_label(device), "dtype": rt.dtype_name(dtype), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "flash_mla_backend": rt.flash_mla_backend(device) if "flash_mla" in args.attns else None,
        "model": e2e_model.describe(config), "weight_gb": e2e_model.weight_bytes(model) / 1e9,
        "new_tokens": args.new_tokens, "overhead_steps": args.overhead_steps, "time_budget_s": args.time_budget_s,
        "timing": "one generate() per row; a logits processor syncs and timestamps each step: TTFT = start -> "
                  "first logits, decode = first -> last logits over new_tokens - 1 steps",
        "peak_memory": "torch.cuda.max_memory_allocated during the generate() call, weights included",
    }
    print(f"{len(runs)} runs, time budget {args.time_budget_s:.0f} s; flash_mla backend: {meta['flash_mla_backend']}",
          flush=True)
    rows = run_all(model, runs, args, device, meta, t0)
    e2e_report.add_comparisons(rows)
    meta["elapsed_s"] = time.perf_counter() - t0
    e2e_report.write_json(args.json, meta, rows)

    title = (f"generate(), {config.num_hidden_layers} layers of DeepSeek-V3 attention, {rt.dtype_name(dtype)}, "
             f"{args.new_tokens} new tokens greedy, {meta['device']}, transformers {transformers.__version__}")
    print(f"\n{title}\n")
    print(e2e_report.main_table(rows))
    targets = e2e_report.targets_summary(rows, TARGETS, CAPABILITY)
    if targets:
        print("\nTargets (issue 5):\n" + "\n".join("  " + line for line in targets))
    meta["targets"] = targets
    e2e_report.write_json(args.json, meta, rows)
    if args.overhead_steps > 0:
        print(f"\nPer-step overhead: generate() step vs {args.overhead_steps} bare decode forwards on the same cache "
              "(host ms/step ~ bare forward ms/step means the step is bound by Python and kernel launches)\n")
        print(e2e_report.overhead_table(rows))
    if args.plot_prefix:
        try:
            from e2e_plots import write_plots

            for path in write_plots(rows, args.plot_prefix, title):
                print(f"wrote {path}")
        except ImportError as error:
            print(f"plots not written: {error}")
    if args.json:
        print(f"wrote {args.json}")
    print(f"elapsed {meta['elapsed_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
