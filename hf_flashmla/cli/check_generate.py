"""`hf-flashmla check-generate`: flash_mla generate() against eager: greedy match rate, logits error, kernel calls.

    hf-flashmla check-generate                      # random small DeepSeek-V3 model, bf16 on CUDA
    hf-flashmla check-generate --architecture glm4_moe_lite --heads 20   # another served MLA family
    hf-flashmla check-generate --checkpoint PATH    # any local checkpoint of a served MLA family
    hf-flashmla check-generate --device cpu         # the same check on the reference path (float32)

Exits 1 when the logits' relative error reaches --max-rel-error (default 1e-2) or, on an sm90 device,
when the compiled kernel was not called.
"""
from __future__ import annotations

import argparse
import os

import torch

import hf_flashmla  # registers flash_mla
from hf_flashmla.checkpoint import ARCHITECTURES, dense_mlp, make_config, model_class, random_model
from hf_flashmla.cli import runtime as rt
from hf_flashmla.generation_check import compare, left_padded_prompts
from hf_flashmla.transformers_integration import attn_implementation_for


POSITIVE_INTS = ("heads", "layers", "batch", "prompt_length", "new_tokens")


def check_args(parser, args) -> torch.device:
    """Usage errors (exit 2, naming the flag) before any model is built; returns the device."""
    for name in POSITIVE_INTS:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if not args.max_rel_error > 0:  # nan too: every check would pass
        parser.error(f"--max-rel-error: must be > 0, got {args.max_rel_error}")
    if args.checkpoint and not os.path.isfile(os.path.join(args.checkpoint, "config.json")):
        parser.error(f"--checkpoint: {args.checkpoint!r} is not a local checkpoint folder (no config.json in it)")
    try:
        return rt.resolve_device(args.device)
    except ValueError as error:  # its message names --device
        parser.error(str(error))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="hf-flashmla check-generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--architecture", default="deepseek_v3", choices=ARCHITECTURES)
    parser.add_argument("--heads", type=int, default=16, help="query heads of the random model")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--moe", action="store_true", help="MoE MLP in layers 1.. of the random model")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=300, help="> 16: the prefill runs dense (SDPA)")
    parser.add_argument("--new-tokens", type=int, default=100, help="crosses page boundaries (64 tokens)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                        help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--max-rel-error", type=float, default=1e-2)
    parser.add_argument("--no-fp32-reference", action="store_true", help="skip the float32 copy (large checkpoints)")
    args = parser.parse_args(argv)
    device = check_args(parser, args)
    if args.dtype is None:
        args.dtype = "bfloat16" if device.type == "cuda" else "float32"
    dtype = getattr(torch, args.dtype)

    if args.checkpoint:
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(args.checkpoint)
        model = model_class(config).from_pretrained(args.checkpoint, dtype=dtype,
                                                    attn_implementation=attn_implementation_for(config, "eager"))
    else:
        config = make_config(args.architecture, num_attention_heads=args.heads, num_key_value_heads=args.heads,
                             num_hidden_layers=args.layers)
        if not args.moe:  # MoE routing flips on bf16 rounding and would dominate the logits error
            config = dense_mlp(config)
        model = random_model(config, dtype=torch.float32).to(dtype)
    model = model.to(device).eval()
    choice = hf_flashmla.backend(device)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), {dtype}, "
          f"backend {choice.name}: {choice.reason}", flush=True)
    text_config = model.config.get_text_config(decoder=True)
    print(f"model {model.config.model_type}: {text_config.num_hidden_layers} layers, "
          f"{text_config.num_attention_heads} heads; batch {args.batch}, prompt {args.prompt_length} (left-padded "
          f"rows), {args.new_tokens} new tokens", flush=True)

    ids, mask = left_padded_prompts(args.batch, args.prompt_length, text_config.vocab_size,
                                    text_config.pad_token_id or 0, device=device)
    result = compare(model, ids, mask, args.new_tokens, fp32_reference=not args.no_fp32_reference)
    print(f"greedy match rate {result.match_rate:.4f} (identical: {result.identical})")
    print(f"logits relative error, teacher-forced over the prefill and {args.new_tokens - 1} decode steps: "
          f"flash_mla vs eager ({args.dtype}) {result.logits_rel_error:.3e}")
    if result.flash_logits_rel_error_vs_fp32 is not None:
        print(f"  against eager float32: flash_mla {result.flash_logits_rel_error_vs_fp32:.3e}, eager "
              f"{result.baseline_logits_rel_error_vs_fp32:.3e} (the dtype's own noise)")
    print(f"compiled kernel calls (torch.ops.hf_flashmla.mla_decode): {result.kernel_calls}; "
          f"attention paths: {result.paged_calls}")
    print(f"tokens/s: flash_mla {result.flash_tokens_per_s:.1f}, eager {result.baseline_tokens_per_s:.1f}; "
          f"flash_mla KV cache {result.flash_cache_bytes / 2**20:.2f} MiB")
    for row in range(min(2, args.batch)):
        print(f"  row {row} flash_mla: {result.flash_tokens[row, :24].tolist()}")
        print(f"  row {row} eager    : {result.baseline_tokens[row, :24].tolist()}")
    failed = False
    if choice.name == "cuda_sm90" and result.kernel_calls == 0:
        print("FAIL: the compiled kernel was not called")
        failed = True
    if result.logits_rel_error >= args.max_rel_error:
        print(f"FAIL: logits relative error {result.logits_rel_error:.3e} >= {args.max_rel_error}")
        failed = True
    print("RESULT:", "FAIL" if failed else "PASS")
    return 1 if failed else 0

