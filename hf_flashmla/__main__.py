"""Main job: `python -m hf_flashmla [CHECKPOINT] [--arch FAMILY]` (or the `hf-flashmla` console script).
`hf-flashmla SUBCOMMAND ...` runs one of the tools in hf_flashmla/cli/ instead (`hf-flashmla evaluate`,
`hf-flashmla check-generate`; `hf-flashmla --help` lists them).

Without a path it builds (first run only) a small random checkpoint of the --arch family (default
deepseek_v3; any of hf_flashmla.checkpoint.ARCHITECTURES, e.g. glm4_moe_lite, longcat_flash, kimi_linear,
kimi_k25) in ./hf_flashmla_demo_checkpoint (./hf_flashmla_demo_checkpoint_FAMILY for the others), in
safetensors, loads it back with from_pretrained, and generates greedily with attn_implementation="flash_mla"
and "eager": prints the tokens of both, whether they match, tokens/s and the KV-cache bytes of each, and the
logits error (teacher-forced on eager's tokens, next to eager's own error against float32, i.e. the dtype's
noise). Any local checkpoint folder of a served MLA family can be given instead.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

import hf_flashmla
from hf_flashmla.checkpoint import ARCHITECTURES, DEMO_CHECKPOINT, build_checkpoint, model_class
from hf_flashmla.cli import run_subcommand, subcommands_help
from hf_flashmla.generation_check import compare, left_padded_prompts
from hf_flashmla.hybrid_cache import mla_layers
from hf_flashmla.latent_cache import cache_bytes_per_token_per_layer
from hf_flashmla.transformers_integration import attn_implementation_for

DEFAULT_PATH = DEMO_CHECKPOINT
DEFAULT_ARCH = "deepseek_v3"


def demo_path(arch: str) -> str:
    return DEFAULT_PATH if arch == DEFAULT_ARCH else f"{DEFAULT_PATH}_{arch}"


def _log(message):
    print(message, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hf_flashmla", description=__doc__.split("\n\n")[0],
                                     epilog=subcommands_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help=f"local checkpoint folder of an MLA model (default: build a random one of --arch in "
                             f"./{DEFAULT_PATH}[_ARCH])")
    parser.add_argument("--arch", default=DEFAULT_ARCH, choices=ARCHITECTURES,
                        help=f"family of the random demo checkpoint (default {DEFAULT_ARCH})")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt-length", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--no-fp32-reference", action="store_true",
                        help="skip the float32 copy used for the noise floor (large checkpoints)")
    args = parser.parse_args(argv)
    for name in ("batch", "prompt_length", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"--device: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device: {args.device!r} asked for, but CUDA is not available")
    if args.checkpoint is not None and not os.path.isfile(os.path.join(args.checkpoint, "config.json")):
        parser.error(f"checkpoint: {args.checkpoint!r} is not a local checkpoint folder (no config.json in it)")
    return args


def divergence_lines(divergences) -> list[str]:
    """One line per row whose greedy tokens differ from eager's (generation_check.first_divergences)."""
    return [f"[result]   row {d['row']} first differs at new token {d['step']}: eager's own logits there separate its "
            f"token from flash_mla's by {d['gap']:.3g} ({d['gap_rel']:.1e} of its largest logit): "
            + ("a near-tie at this dtype, so rounding decides it" if d["near_tie"] else "NOT a near-tie")
            for d in divergences]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    code = run_subcommand(argv)
    if code is not None:
        return code
    args = parse_args(argv)
    default_dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    dtype = getattr(torch, args.dtype) if args.dtype else default_dtype

    from transformers import AutoConfig

    path = args.checkpoint
    if path is None:
        path = build_checkpoint(demo_path(args.arch), architecture=args.arch, log=_log)
    loaded_config = AutoConfig.from_pretrained(path)
    implementation = attn_implementation_for(loaded_config, "flash_mla")
    _log(f"[load] {model_class(loaded_config).__name__}.from_pretrained({path!r}, attn_implementation="
         f"{implementation!r}, dtype={dtype}) on {args.device}")
    model = model_class(loaded_config).from_pretrained(path, attn_implementation=implementation, dtype=dtype)
    model = model.to(args.device).eval()
    config = model.config.get_text_config(decoder=True)
    latent_layers = len(mla_layers(config))
    choice = hf_flashmla.backend(torch.device(args.device))
    _log(f"[load] {model.config.model_type}: {config.num_hidden_layers} layers ({latent_layers} MLA), "
         f"{config.num_attention_heads} heads, kv_lora_rank {config.kv_lora_rank}, qk_rope_head_dim "
         f"{config.qk_rope_head_dim}, v_head_dim {config.v_head_dim}; flash_mla decode backend: {choice.name} "
         f"({choice.reason})")

    ids, mask = left_padded_prompts(args.batch, args.prompt_length, config.vocab_size, config.pad_token_id or 0,
                                    device=args.device)
    _log(f"[generate] batch {args.batch} (rows left-padded to different lengths), prompt {args.prompt_length}, "
         f"{args.max_new_tokens} new tokens, greedy: flash_mla, then eager, then teacher-forced logits ...")
    result = compare(model, ids, mask, args.max_new_tokens, fp32_reference=not args.no_fp32_reference)

    for name, tokens in (("flash_mla", result.flash_tokens), ("eager", result.baseline_tokens)):
        for row in range(tokens.shape[0]):
            _log(f"  {name:9s} row {row}: {tokens[row].tolist()}")
    _log(f"[result] tokens identical: {result.identical} (match rate {result.match_rate:.3f})")
    for line in divergence_lines(result.divergences):
        _log(line)
    _log(f"[result] tokens/s: flash_mla {result.flash_tokens_per_s:.1f}, eager {result.baseline_tokens_per_s:.1f}")
    real_tokens = int(mask.sum()) + args.batch * (args.max_new_tokens - 1)
    per_token = latent_layers * cache_bytes_per_token_per_layer(config.kv_lora_rank + config.qk_rope_head_dim, dtype)
    expanded_per_token = latent_layers * config.num_attention_heads * (
        config.qk_nope_head_dim + config.qk_rope_head_dim + config.v_head_dim
    ) * torch.empty((), dtype=dtype).element_size()
    _log(f"[result] KV cache: flash_mla {result.flash_cache_bytes / 2**20:.2f} MiB ({real_tokens} real tokens x "
         f"{per_token} bytes: padding not stored), eager {result.baseline_cache_bytes / 2**20:.2f} MiB "
         f"(Transformers >= 5.15 also caches the latent, padding included); expanded K/V for these tokens would "
         f"take {real_tokens * expanded_per_token / 2**20:.2f} MiB")
    _log(f"[result] attention calls: {result.paged_calls}; compiled kernel calls: {result.kernel_calls}")
    line = f"[result] logits relative error (teacher-forced) flash_mla vs eager: {result.logits_rel_error:.2e}"
    if result.flash_logits_rel_error_vs_fp32 is not None:
        line += (f"; against eager float32: flash_mla {result.flash_logits_rel_error_vs_fp32:.2e}, "
                 f"eager {result.baseline_logits_rel_error_vs_fp32:.2e}")
    _log(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
