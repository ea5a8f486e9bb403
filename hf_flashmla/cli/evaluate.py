"""`hf-flashmla evaluate`: check attn_implementation="flash_mla" against stock attention on a checkpoint and a
token or text file.

For a local DeepSeek-V2/V3-architecture checkpoint (or, without one, the random demo checkpoint), runs the
same data through the reference implementation (default eager), the candidate (default flash_mla) and
baselines (default sdpa, reported for scale: the disagreement between two stock implementations is what
"normal" looks like in this dtype), and measures:

- logits, teacher-forced: every position of each window; the first --prefill-len positions come from one
  prefill forward into a fresh cache (flash_mla: its paged latent cache), the rest from decode forwards of
  --step-tokens tokens each (the kernel's path). Per token: max |diff|, relative error
  ||diff||_inf / ||ref||_inf (max_rel), ||diff||_2 / ||ref||_2 (mean_rel = its mean), top-1 agreement;
- perplexity of each implementation on the windows;
- greedy continuations of --new-tokens tokens from --prompts prompts: identical-token rate, and each first
  divergence judged by the reference's own logits: a near-tie when the two tokens' logits are within
  tie_rel of the largest logit, otherwise an unexplained divergence.

--kv-cache-dtype fp8_e4m3 gives flash_mla an FP8 latent cache (FlashMLA's layout: e4m3 latent, a float32 scale per
128 values, bf16 rope): `hf-flashmla evaluate --kv-cache-dtype fp8_e4m3` measures the FP8 cache against eager, whose
keys are exact (what a bf16 cache of flash_mla gives, within the kernel's rounding), and checks it against the
FP8 tolerances below instead of the dtype's.

Checks on the candidate (tolerances per dtype, override with --tol-*):

  dtype     max_rel  mean_rel  ppl_rel  tie_rel
  float32   1e-3     1e-4      1e-3     1e-4
  bfloat16  1.5e-1   1e-2      1e-2     2e-2
  float16   5e-2     5e-3      5e-3     1e-2
  fp8 cache 3e-1     5e-2      5e-2     1e-1    (--kv-cache-dtype fp8_e4m3, any dtype)

  mean_rel is the main figure (bf16: sdpa vs eager gives ~5e-3 on the demo checkpoint); max_rel, the worst
  single token, catches a broken position (stock vs stock reaches ~0.11 there in bf16).
  max_rel <= tol, mean_rel <= tol, |ppl_cand / ppl_ref - 1| <= ppl_rel, no unexplained greedy divergence.
  A check that misses its tolerance still passes when the candidate stays within --baseline-factor
  (default 2) x the largest value of the stock baselines in the same run: a badly conditioned model (e.g.
  large random weights in bf16) disagrees across stock implementations too, which is not flash_mla's fault.

Exit codes: 0 all checks pass; 1 the candidate disagrees beyond a tolerance (or fails while running);
2 usage or setup error (bad arguments, unreadable checkpoint or data, text without a tokenizer, an
implementation that is not available here, the reference itself failing, e.g. out of memory).

Usage:
  hf-flashmla evaluate /path/to/checkpoint --text corpus.txt --json eval.json
  hf-flashmla evaluate /path/to/checkpoint --tokens ids.pt --dtype bfloat16
  hf-flashmla evaluate                  # demo checkpoint, random token ids
  hf-flashmla evaluate --preset deepseek-v3 --dtype bfloat16   # DeepSeek-V3 attention shapes, random weights
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from hf_flashmla.checkpoint import DEMO_CHECKPOINT, build_checkpoint
from hf_flashmla.cli import runtime as rt
from hf_flashmla.cli import token_data
from hf_flashmla.cli.metrics import LogitErrors, Perplexity, greedy, greedy_agreement, teacher_forced_logits

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

TOLERANCES = {
    "float32": {"max_rel": 1e-3, "mean_rel": 1e-4, "ppl_rel": 1e-3, "tie_rel": 1e-4},
    "bfloat16": {"max_rel": 1.5e-1, "mean_rel": 1e-2, "ppl_rel": 1e-2, "tie_rel": 2e-2},
    "float16": {"max_rel": 5e-2, "mean_rel": 5e-3, "ppl_rel": 5e-3, "tie_rel": 1e-2},
}
# With --kv-cache-dtype fp8_e4m3 the keys themselves are rounded to e4m3 (about 2^-5 relative per value): a lossy
# cache, checked for gross failures (a wrong layout or scale gives errors of order 1), not for kernel rounding.
FP8_TOLERANCES = {"max_rel": 3e-1, "mean_rel": 5e-2, "ppl_rel": 5e-2, "tie_rel": 1e-1}
# Random models built in memory instead of a checkpoint (--preset): DeepSeek-V3's attention shapes with a dense MLP
# and a small vocabulary, or the tests' tiny shape. Every layer is dense: routed experts would dominate memory and
# time without telling anything about attention.
PRESETS = {
    "deepseek-v3": dict(hidden_size=7168, num_attention_heads=128, num_key_value_heads=128, q_lora_rank=1536,
                        kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                        intermediate_size=4096, vocab_size=4096, num_hidden_layers=2),
    "tiny": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=512,
                 qk_nope_head_dim=16, qk_rope_head_dim=64, v_head_dim=16, intermediate_size=64, vocab_size=256,
                 num_hidden_layers=2),
}


class UsageError(Exception):
    pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="hf-flashmla evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("checkpoint", nargs="?", default=None, help="local checkpoint folder (default: demo checkpoint)")
    p.add_argument("--demo-dir", default=None,
                   help="where the demo checkpoint is (built on first use; default: the main job's folder, "
                        "./hf_flashmla_demo_checkpoint)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="instead of a checkpoint: a random model built in memory")
    p.add_argument("--layers", type=int, default=None, help="with --preset: decoder layers")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--text", default=None, help="text file, tokenized with the checkpoint's tokenizer")
    data.add_argument("--tokens", default=None, help="token-id file: .txt ints, .json list(s), .pt tensor/list")
    p.add_argument("--random-tokens", type=int, default=4096, help="without --text/--tokens: this many random ids")
    p.add_argument("--seq-len", type=int, default=256, help="window length (tokens)")
    p.add_argument("--max-windows", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward")
    p.add_argument("--prefill-len", type=int, default=None, help="positions from the prefill (default seq_len/2)")
    p.add_argument("--step-tokens", type=int, default=1, help="tokens per teacher-forced decode forward")
    p.add_argument("--prompts", type=int, default=4, help="greedy prompts (first windows' heads)")
    p.add_argument("--prompt-len", type=int, default=None, help="greedy prompt length (default seq_len/2)")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt (0: skip greedy)")
    p.add_argument("--reference", default="eager")
    p.add_argument("--candidate", default="flash_mla")
    p.add_argument("--baselines", default="sdpa", help="comma list, reported only ('' for none)")
    p.add_argument("--kv-cache-dtype", default="auto", choices=("auto", "fp8_e4m3"),
                   help="flash_mla's latent cache: auto (the model's dtype) or fp8_e4m3 (FlashMLA's FP8 layout)")
    p.add_argument("--device", default="auto")
    p.add_argument("--device-map", default=None,
                   help="passed to from_pretrained (e.g. auto) for models larger than one GPU")
    p.add_argument("--dtype", default="auto", help="auto = bfloat16 on CUDA, float32 on CPU")
    for name in ("max_rel", "mean_rel", "ppl_rel", "tie_rel"):
        p.add_argument(f"--tol-{name.replace('_', '-')}", dest=f"tol_{name}", type=float, default=None,
                       help=f"override the dtype's {name} tolerance")
    p.add_argument("--baseline-factor", type=float, default=2.0,
                   help="a check also passes within this factor of the stock baselines' own value (0: off)")
    p.add_argument("--require-kernel", action="store_true",
                   help="fail unless flash_mla's decode ran on the compiled kernel (paged_kernel calls > 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the full report here")
    args = p.parse_args(argv)
    args.baseline_list = [b for b in args.baselines.split(",") if b]
    for name in ("seq_len", "max_windows", "batch_size", "step_tokens", "prompts", "random_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1")
    if args.new_tokens < 0:
        p.error("--new-tokens: must be >= 0")
    if args.layers is not None and args.layers < 1:
        p.error("--layers: must be >= 1")
    if args.baseline_factor < 0:
        p.error("--baseline-factor: must be >= 0 (0: off)")
    args.prefill_len = args.prefill_len if args.prefill_len is not None else max(args.seq_len // 2, 1)
    if not 1 <= args.prefill_len <= args.seq_len:
        p.error(f"--prefill-len: must be in [1, --seq-len={args.seq_len}]")
    args.prompt_len = args.prompt_len if args.prompt_len is not None else max(args.seq_len // 2, 1)
    if not 1 <= args.prompt_len <= args.seq_len:
        p.error(f"--prompt-len: must be in [1, --seq-len={args.seq_len}]")
    if args.preset and args.checkpoint:
        p.error("give a checkpoint or --preset, not both")
    if args.layers is not None and not args.preset:
        source = f"checkpoint {args.checkpoint!r}" if args.checkpoint else "the demo checkpoint"
        p.error(f"--layers: applies only with --preset (a checkpoint has its own layers), got --layers {args.layers} "
                f"with {source}")
    if args.json is not None:
        reason = json_path_error(args.json)
        if reason:
            p.error(f"--json: {reason}")
    names = [args.reference, args.candidate] + args.baseline_list
    if len(set(names)) != len(names):
        p.error(f"--reference, --candidate and --baselines must all differ, got {names}")
    return args


def json_path_error(path: str) -> str | None:
    """Why the report cannot be written to `path` (checked before anything is loaded), or None."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"expected a file path, got the folder {path!r}"
    if not os.path.isdir(folder):
        return f"expected a file in an existing folder, got {path!r} (no folder {folder!r})"
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"expected a writable file path, got {path!r} (no permission to write it)"
    return None


# ----------------------------------------------------------------------------------------------- setup
def demo_checkpoint(path: str) -> str:
    return build_checkpoint(path, log=lambda m: print(m, flush=True))


def preset_model(name: str, layers: int | None, dtype, device, attn: str, seed: int, max_positions: int):
    """A random model of preset `name` with the default initialisation, allocated directly on `device`."""
    from transformers import AutoModelForCausalLM

    from hf_flashmla.checkpoint import make_config

    fields = dict(PRESETS[name])
    if layers is not None:
        fields["num_hidden_layers"] = layers
    config = make_config("deepseek_v3", **fields, first_k_dense_replace=fields["num_hidden_layers"],
                         max_position_embeddings=max_positions, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    model.generation_config.eos_token_id = None  # a random model must not stop early
    return model.eval().requires_grad_(False)


def check_kv_cache_dtype(kv_cache_dtype: str, dtype: torch.dtype):
    """The FP8 latent cache takes the model dtypes latent_cache.FP8_MODEL_DTYPES lists: refused before loading."""
    if kv_cache_dtype == "auto":
        return
    from hf_flashmla.latent_cache import FP8_MODEL_DTYPES

    served = " or ".join(rt.dtype_name(d) for d in FP8_MODEL_DTYPES)
    if dtype not in FP8_MODEL_DTYPES:
        raise UsageError(f"--kv-cache-dtype {kv_cache_dtype}: an FP8 cache serves {served} models (the FP8 kernels "
                         f"take bfloat16 queries; float32 runs the reference path, e.g. on the CPU), got --dtype "
                         f"{rt.dtype_name(dtype)}")


def load_model(path, dtype, device, attn, device_map=None):
    from transformers import AutoModelForCausalLM

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UsageError(f"checkpoint: {path} has no config.json (a local Transformers checkpoint folder is expected)")
    if device_map:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn, device_map=device_map)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn).to(device)
    return model.eval().requires_grad_(False)


def load_data(args, tokenizer, vocab_size):
    if args.tokens:
        tokens, source = token_data.read_token_file(args.tokens), f"token file {args.tokens}"
    elif args.text:
        tokens, source = token_data.read_text_file(args.text, tokenizer), f"text file {args.text}"
    else:
        tokens = token_data.random_tokens(args.random_tokens, vocab_size, args.seed)
        source = f"{args.random_tokens} random token ids (seed {args.seed}); pass --text or --tokens for real data"
    return token_data.windows(tokens, args.seq_len, args.max_windows, vocab_size), source


def tolerances(args, dtype) -> dict:
    tol = dict(FP8_TOLERANCES if args.kv_cache_dtype == "fp8_e4m3" else TOLERANCES[rt.dtype_name(dtype)])
    for name in tol:
        override = getattr(args, f"tol_{name}")
        if override is not None:
            tol[name] = override
    return tol


# ----------------------------------------------------------------------------------------------- measuring
def measure(model, args, windows, impls, device) -> dict:
    """Per implementation: logit errors vs the reference, perplexity, greedy agreement; or its error."""
    results = {impl: {"perplexity": Perplexity()} for impl in impls}
    errors = {impl: LogitErrors() for impl in impls[1:]}
    failed = {}
    calls_before = rt.flash_mla_call_counts()
    for start in range(0, windows.shape[0], args.batch_size):
        ids = windows[start:start + args.batch_size].to(device)
        ref_logits = None
        for impl in impls:
            if impl in failed:
                continue
            try:
                rt.use_attn(model, impl)
                logits = teacher_forced_logits(model, impl, ids, args.prefill_len, args.step_tokens,
                                               args.kv_cache_dtype)
            except Exception as error:  # noqa: BLE001  (a failing implementation is a result)
                failed[impl] = f"{type(error).__name__}: {error}"
                if impl == impls[0]:
                    raise
                continue
            results[impl]["perplexity"].update(logits, ids)
            if ref_logits is None:
                ref_logits = logits
            else:
                errors[impl].update(ref_logits, logits, args.prefill_len)
            del logits
    if args.new_tokens > 0:
        prompts = windows[: args.prompts, : args.prompt_len].to(device)
        rt.use_attn(model, impls[0])
        ref_tokens, ref_logits = greedy(model, prompts, args.new_tokens, _cache_config(args, impls[0]))
        results[impls[0]]["greedy_tokens"] = ref_tokens.tolist()
        for impl in impls[1:]:
            if impl in failed:
                continue
            try:
                rt.use_attn(model, impl)
                tokens, _ = greedy(model, prompts, args.new_tokens, _cache_config(args, impl))
            except Exception as error:  # noqa: BLE001
                failed[impl] = f"{type(error).__name__}: {error}"
                continue
            results[impl]["greedy_tokens"] = tokens.tolist()
            results[impl]["greedy"] = greedy_agreement(ref_tokens, ref_logits, tokens, args.tol["tie_rel"])
    if "flash_mla" in results:  # which paths flash_mla took (its counters see only flash_mla forwards)
        results["flash_mla"]["flash_mla_calls"] = rt.count_delta(calls_before, rt.flash_mla_call_counts())
    for impl in impls:
        results[impl]["perplexity"] = results[impl]["perplexity"].value
        if impl in errors:
            results[impl]["logits"] = errors[impl].summary()
        if impl in failed:
            results[impl]["error"] = failed[impl]
    return results


def _cache_config(args, impl) -> dict | None:
    """generate()'s cache_config for an implementation: the FP8 cache is flash_mla's."""
    return {"kv_cache_dtype": args.kv_cache_dtype} if impl == "flash_mla" and args.kv_cache_dtype != "auto" else None


def _metrics(result) -> dict:
    """The checked quantities of one implementation's result (absent ones omitted)."""
    out = {}
    logits = result.get("logits", {}).get("all")
    if logits:
        out["logits max_rel"] = logits["max_rel"]
        out["logits mean_rel"] = logits["mean_rel"]
    if "ppl_rel" in result:
        out["perplexity rel diff"] = result["ppl_rel"]
    if "greedy" in result:
        out["greedy divergences not near-ties"] = result["greedy"]["unexplained_divergences"]
    return out


_LIMITS = {"logits max_rel": "max_rel", "logits mean_rel": "mean_rel", "perplexity rel diff": "ppl_rel",
           "greedy divergences not near-ties": None}


def checks(results, candidate, baselines, tol, baseline_factor) -> list[dict]:
    """Each check passes within its absolute tolerance, or within baseline_factor x the largest value a
    stock baseline reached in the same run (a badly conditioned model disagrees with itself across stock
    implementations too; that is not the candidate's fault)."""
    result = results[candidate]
    if "error" in result:
        return [{"name": "runs", "value": result["error"], "limit": "no exception", "ok": False}]
    base_values = [_metrics(results[b]) for b in baselines if "error" not in results[b]]
    out = []
    for name, value in _metrics(result).items():
        limit = tol[_LIMITS[name]] if _LIMITS[name] else 0
        row = {"name": name, "value": value, "limit": limit, "ok": value <= limit}
        scale = [v[name] for v in base_values if name in v]
        if not row["ok"] and scale and baseline_factor > 0:
            row["baseline_limit"] = baseline_factor * max(scale)
            row["ok"] = value <= row["baseline_limit"]
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------------- output
def _g(value, spec=".2e", width=9):
    return format("-" if value is None else format(value, spec), f">{width}")


def print_report(results, impls, reference, candidate, check_rows, tol, tol_label, baseline_factor):
    head = (f"{'implementation':<24}{'max_abs':>10}{'max_rel':>10}{'mean_rel':>10}{'top1':>8}{'perplexity':>13}"
            f"{'ppl rel':>10}{'greedy same':>13}{'ties/div':>10}")
    print(head)
    print("-" * len(head))
    for impl in impls:
        r = results[impl]
        role = "reference" if impl == reference else "candidate" if impl == candidate else "baseline"
        name = f"{impl} ({role})"
        if "error" in r:
            print(f"{name:<24}failed: {r['error']}")
            continue
        lg = r.get("logits", {}).get("all", {})
        gr = r.get("greedy")
        ties = "-"
        if gr is not None:
            ties = f"{len(gr['divergences']) - gr['unexplained_divergences']}/{len(gr['divergences'])}"
        print(f"{name:<24}{_g(lg.get('max_abs'), width=10)}{_g(lg.get('max_rel'), width=10)}"
              f"{_g(lg.get('mean_rel'), width=10)}{_g(lg.get('top1_agreement'), '.1%', 8)}"
              f"{_g(r['perplexity'], '.5g', 13)}{_g(r.get('ppl_rel'), width=10)}"
              f"{_g(gr and gr['match_rate'], '.1%', 13)}{ties:>10}")
        for group in ("prefill", "decode"):
            g = r.get("logits", {}).get(group)
            if g:
                print(f"{'  ' + group + ' positions':<24}{_g(g['max_abs'], width=10)}{_g(g['max_rel'], width=10)}"
                      f"{_g(g['mean_rel'], width=10)}{_g(g['top1_agreement'], '.1%', 8)}   ({g['tokens']} tokens)")
    calls = results.get("flash_mla", {}).get("flash_mla_calls")
    if calls is not None:
        paths = ", ".join(f"{k} {v}" for k, v in sorted(calls.items())) or "none"
        print(f"\nflash_mla attention paths taken: {paths}")
    print(f"\nchecks on {candidate} ({tol_label} tolerances: "
          + ", ".join(f"{k} {v:g}" for k, v in tol.items())
          + (f"; or within {baseline_factor:g}x the stock baselines" if baseline_factor > 0 else "") + ")")
    for c in check_rows:
        value = c["value"] if isinstance(c["value"], str) else format(c["value"], ".3g")
        how = f"limit {c['limit']:g}" if not isinstance(c["limit"], str) else f"limit {c['limit']}"
        if "baseline_limit" in c:
            how += f"; baseline limit {c['baseline_limit']:.3g}"
        print(f"  {'PASS' if c['ok'] else 'FAIL'}  {c['name']}: {value} ({how})")


def main(argv=None) -> int:
    t0 = time.perf_counter()
    args = parse_args(argv)
    try:
        device = rt.resolve_device(args.device)
        dtype = rt.resolve_dtype(args.dtype, device)
        check_kv_cache_dtype(args.kv_cache_dtype, dtype)
        args.tol = tolerances(args, dtype)
        impls = [args.reference, args.candidate] + args.baseline_list
        flags = ["--reference", "--candidate"] + ["--baselines"] * len(args.baseline_list)
        for flag, impl in zip(flags, impls):
            reason = rt.attn_unavailable_reason(impl)
            if reason:
                raise UsageError(f"{flag} {impl}: unavailable: {reason}")
        if args.preset:
            checkpoint = f"random {args.preset} model (seed {args.seed})"
            model = preset_model(args.preset, args.layers, dtype, device, args.reference, args.seed,
                                 max_positions=4 * args.seq_len + args.new_tokens)
        else:
            checkpoint = args.checkpoint or demo_checkpoint(args.demo_dir or DEMO_CHECKPOINT)
            model = load_model(checkpoint, dtype, device, args.reference, args.device_map)
            device = model.device if args.device_map else device  # inputs go where the embedding is
        cache_note = f", flash_mla latent cache {args.kv_cache_dtype}" if args.kv_cache_dtype != "auto" else ""
        print(f"evaluate: {checkpoint}, {device} {rt.dtype_name(dtype)}{cache_note}", flush=True)
        for flag, impl in zip(flags, impls):
            reason = rt.use_attn(model, impl)
            if reason:
                raise UsageError(f"{flag} {impl}: unavailable for this model: {reason}")
        tokenizer = None if args.preset else token_data.load_tokenizer(checkpoint)
        windows, source = load_data(args, tokenizer, model.config.vocab_size)
    except (UsageError, token_data.DataError, ValueError, OSError) as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(f"data: {source}: {windows.shape[0]} windows x {windows.shape[1]} tokens "
          f"(prefill {args.prefill_len}, then decode steps of {args.step_tokens}); greedy: "
          f"{min(args.prompts, windows.shape[0])} prompts x {args.prompt_len} tokens + {args.new_tokens} new",
          flush=True)

    try:
        results = measure(model, args, windows, impls, device)
    except Exception as error:  # noqa: BLE001  (only the reference's failure gets here: nothing to compare to)
        hint = " (smaller --seq-len / --batch-size?)" if rt.is_oom(error) else ""
        print(f"evaluate: error: the reference {args.reference} failed: {type(error).__name__}: {error}{hint}",
              file=sys.stderr)
        return EXIT_USAGE
    ref_ppl = results[args.reference]["perplexity"]
    for impl in impls[1:]:
        if results[impl].get("perplexity") and ref_ppl:
            results[impl]["ppl_rel"] = abs(results[impl]["perplexity"] / ref_ppl - 1)
    check_rows = checks(results, args.candidate, args.baseline_list, args.tol, args.baseline_factor)
    if args.require_kernel:
        calls = (results.get("flash_mla") or {}).get("flash_mla_calls") or {}
        check_rows.append({"name": "flash_mla decode on the compiled kernel (paged_kernel calls)",
                           "value": calls.get("paged_kernel", 0), "limit": "> 0",
                           "ok": calls.get("paged_kernel", 0) > 0})
    ok = all(c["ok"] for c in check_rows)
    print()
    tol_label = "FP8 cache" if args.kv_cache_dtype == "fp8_e4m3" else rt.dtype_name(dtype)
    print_report(results, impls, args.reference, args.candidate, check_rows, args.tol, tol_label, args.baseline_factor)
    code = EXIT_PASS if ok else EXIT_FAIL
    verdict = "PASS" if ok else "FAIL"
    print(f"\nRESULT: {verdict}: {args.candidate} vs {args.reference} (exit {code}, {time.perf_counter() - t0:.0f} s)")
    if args.json:
        import transformers

        report = {"result": verdict, "exit_code": code, "checkpoint": checkpoint, "data": source,
                  "windows": list(windows.shape), "prefill_len": args.prefill_len, "step_tokens": args.step_tokens,
                  "dtype": rt.dtype_name(dtype), "device": rt.device_label(device), "tolerances": args.tol,
                  "kv_cache_dtype": args.kv_cache_dtype,
                  "reference": args.reference, "candidate": args.candidate, "baselines": args.baseline_list,
                  "checks": check_rows, "baseline_factor": args.baseline_factor, "results": results,
                  "torch": torch.__version__,
                  "transformers": transformers.__version__, "python": platform.python_version(),
                  "flash_mla_backend": rt.flash_mla_backend(device)}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return code


