"""Main job: `python -m hf_flashmla [CHECKPOINT]`.

Without a path it builds (first run only) a small random DeepSeek-V3-architecture checkpoint in
./hf_flashmla_demo_checkpoint (safetensors), loads it back with from_pretrained, and generates greedily
with attn_implementation="flash_mla" and "eager": prints the tokens of both, whether they match,
tokens/s and the KV-cache bytes of each. Any local DeepSeek-V2/V3 checkpoint folder can be given.
"""
from __future__ import annotations

import argparse
import time

import torch

import hf_flashmla
from hf_flashmla.checkpoint import build_checkpoint
from hf_flashmla.transformers_integration import call_counts, reset_call_counts

DEFAULT_PATH = "hf_flashmla_demo_checkpoint"


def _log(message):
    print(message, flush=True)


def _cache_bytes(cache) -> int:
    if isinstance(cache, hf_flashmla.LatentPagedCache):
        return cache.used_bytes()
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


def _generate(model, input_ids, attention_mask, max_new_tokens, implementation):
    model.set_attn_implementation(implementation)
    device = input_ids.device
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                  do_sample=False, return_dict_in_generate=True, output_scores=True)
    model.generate(input_ids[:, -8:], attention_mask=attention_mask[:, -8:], max_new_tokens=2, do_sample=False)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = model.generate(input_ids, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    tokens = out.sequences[:, input_ids.shape[1]:]
    return tokens, torch.stack(out.scores, dim=1).float(), seconds, _cache_bytes(cache), cache


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hf_flashmla", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=DEFAULT_PATH,
                        help=f"local DeepSeek-V2/V3 checkpoint folder (default: build a random one in ./{DEFAULT_PATH})")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt-length", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 / float16 / float32 (default: bf16 on CUDA, fp32 on CPU)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)

    from transformers import AutoModelForCausalLM

    if args.checkpoint == DEFAULT_PATH:
        build_checkpoint(DEFAULT_PATH, log=_log)
    _log(f"[load] from_pretrained({args.checkpoint!r}, attn_implementation='flash_mla', dtype={dtype}) on {args.device}")
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, attn_implementation="flash_mla", dtype=dtype)
    model = model.to(args.device).eval()
    config = model.config
    _log(f"[load] {config.model_type}: {config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
         f"kv_lora_rank {config.kv_lora_rank}, rope {config.qk_rope_head_dim}; "
         f"flash_mla backend: {hf_flashmla.backend(torch.device(args.device)).name}")

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, config.vocab_size, (args.batch, args.prompt_length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(1, args.batch):  # left padding of different lengths
        pad = min(row * args.prompt_length // (2 * args.batch), args.prompt_length - 1)
        attention_mask[row, :pad] = 0
        input_ids[row, :pad] = config.pad_token_id or 0
    input_ids, attention_mask = input_ids.to(args.device), attention_mask.to(args.device)

    results = {}
    for implementation in ("flash_mla", "eager"):
        _log(f"[generate] {implementation}: batch {args.batch}, prompt {args.prompt_length}, "
             f"{args.max_new_tokens} new tokens ...")
        reset_call_counts()
        tokens, scores, seconds, cache_bytes, cache = _generate(model, input_ids, attention_mask, args.max_new_tokens,
                                                                 implementation)
        results[implementation] = (tokens, scores)
        rate = tokens.numel() / seconds
        _log(f"[generate] {implementation}: {seconds:.2f} s, {rate:.1f} tokens/s, KV cache {cache_bytes / 2**20:.2f} MiB "
             f"({type(cache).__name__})")
        if implementation == "flash_mla":
            _log(f"[generate] flash_mla attention calls: {dict(call_counts)}")
            stored = sum(cache.sequence_lengths)
            per_token = config.num_hidden_layers * config.num_attention_heads * (
                config.qk_nope_head_dim + config.qk_rope_head_dim + config.v_head_dim) * torch.empty((), dtype=dtype).element_size()
            _log(f"[generate] flash_mla stores {stored} real tokens (padding excluded) x {config.num_hidden_layers} layers "
                 f"x {config.kv_lora_rank + config.qk_rope_head_dim} values; expanded K/V for them would take "
                 f"{stored * per_token / 2**20:.2f} MiB")
        for row in range(tokens.shape[0]):
            _log(f"  {implementation} row {row}: {tokens[row].tolist()}")

    flash_tokens, flash_scores = results["flash_mla"]
    eager_tokens, eager_scores = results["eager"]
    match = (flash_tokens == eager_tokens).float().mean().item()
    first = (flash_tokens == eager_tokens).all(dim=0).logical_not().nonzero()
    steps = int(first[0]) if len(first) else flash_tokens.shape[1]
    error = ((flash_scores[:, :steps] - eager_scores[:, :steps]).norm() / eager_scores[:, :steps].norm()).item() \
        if steps else float("nan")
    _log(f"[result] tokens identical: {bool(match == 1.0)} (match rate {match:.3f}); relative logits error over the "
         f"{steps} steps before any divergence: {error:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
