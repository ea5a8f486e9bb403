"""Prefill under a memory budget: a forward pass over more prompt tokens than fit runs in blocks.

The latent cache of a prompt batch is small (1152 B per token and layer in bf16, 656 in FP8), but a forward pass over
the whole batch holds every token's activations at once: queries, MLP and MoE intermediates, about 100-200
KB per token for DeepSeek-V2-Lite. So with attn_implementation="flash_mla" and a LatentPagedCache, the
causal-LM forward of a prompt of more than N tokens (batch x length) runs the model on blocks of at most N
tokens instead: rows are grouped (whole rows when a row fits, rows_per_block = N // length), a longer row
is cut along the sequence into pieces of N tokens, each piece attending to its row's earlier tokens
through the pages; each block writes its latent to the pages, and only each row's last logits are kept
(what generate() asks for, logits_to_keep=1). The tokens and logits are those of one unblocked pass.

N comes from `prefill_tokens=` (a generate() or forward argument: 0 turns blocking off), else from the free
GPU memory (budget()): what is free, less the pages this prompt will still allocate and a margin, over a
per-token working set estimated from the model's shapes. On the CPU nothing is blocked unless asked.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from hf_flashmla.hybrid_cache import HybridLatentCache
from hf_flashmla.latent_cache import LatentPagedCache, cache_bytes_per_token_per_layer, pages_for
from hf_flashmla.transformers_integration.counters import counters

logger = logging.getLogger(__name__)

ARGUMENT = "prefill_tokens"
MIN_BLOCK_TOKENS = 256
MARGIN_BYTES = 1 << 30       # kept free for the allocator's fragmentation and the kernels' workspaces
MARGIN_FRACTION = 0.1


@dataclasses.dataclass
class PrefillBudget:
    """How many tokens a prefill block may hold on a device, and why."""
    tokens: int
    free_bytes: int
    pool_bytes: int
    bytes_per_token: int
    history_bytes: int
    margin_bytes: int

    def __str__(self):
        gib = 1 << 30
        return (f"prefill block of at most {self.tokens} tokens = (free {self.free_bytes / gib:.2f} GiB - latent pages "
                f"still to allocate {self.pool_bytes / gib:.2f} GiB - one row's expanded K/V "
                f"{self.history_bytes / gib:.2f} GiB - margin {self.margin_bytes / gib:.2f} GiB) / "
                f"{self.bytes_per_token} B per token "
                f"(per token: dtype bytes x (6 hidden + 4 heads x (qk_head_dim + v_head_dim) + 3 MLP width), MLP width "
                f"= max(intermediate_size, 2 (top_k + shared experts) x moe_intermediate_size))")


def _text_config(model):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def bytes_per_token(model) -> int:
    """A decoder layer's transient working set per token (an upper estimate: what the layer's largest
    intermediates take at once, plus the hidden states flowing through)."""
    config = _text_config(model)
    element = torch.empty((), dtype=model.dtype).element_size()
    heads = config.num_attention_heads
    qk_head = getattr(config, "qk_head_dim", None) or config.qk_nope_head_dim + config.qk_rope_head_dim
    mlp = getattr(config, "intermediate_size", 0) or 0
    moe = getattr(config, "moe_intermediate_size", 0) or 0
    experts = (getattr(config, "num_experts_per_tok", 0) or 0) + (getattr(config, "n_shared_experts", 0) or 0)
    mlp_width = max(mlp, 2 * experts * moe)
    return element * (6 * config.hidden_size + 4 * heads * (qk_head + config.v_head_dim) + 3 * mlp_width)


def history_bytes_per_token(model) -> int:
    """Keys and values expanded from the latent, per history token of the row a block attends to."""
    config = _text_config(model)
    element = torch.empty((), dtype=model.dtype).element_size()
    qk_head = config.qk_nope_head_dim + config.qk_rope_head_dim
    return element * config.num_attention_heads * (qk_head + config.v_head_dim)


def _free_bytes(device: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def _pool_bytes_to_come(model, cache: LatentPagedCache, batch: int, length: int) -> int:
    """The latent pages this prompt will still allocate (all layers), beyond what the pools hold."""
    config = _text_config(model)
    tokens_per_row = max(length + cache.get_seq_length(), cache.reserve_tokens or 0)
    pages = batch * pages_for(tokens_per_row) + 1
    held = cache.pool_pages if cache.is_initialized else 0
    per_token = cache_bytes_per_token_per_layer(config.kv_lora_rank + config.qk_rope_head_dim, model.dtype,
                                                cache.kv_cache_dtype, config.kv_lora_rank)
    row_bytes = 64 * per_token * config.num_hidden_layers
    return max(pages - held, 0) * row_bytes


def budget(model, cache: LatentPagedCache, batch: int, length: int) -> PrefillBudget:
    """The block size for a prompt of batch x length tokens on the model's device (CUDA)."""
    device = next(model.parameters()).device
    free = _free_bytes(device)
    pool = _pool_bytes_to_come(model, cache, batch, length)
    per_token = bytes_per_token(model)
    history = (cache.get_seq_length() + length) * history_bytes_per_token(model)
    margin = MARGIN_BYTES + int(MARGIN_FRACTION * free)
    tokens = max((free - pool - history - margin) // per_token, MIN_BLOCK_TOKENS)
    return PrefillBudget(int(tokens), free, pool, per_token, history, margin)


def block_shape(batch: int, length: int, tokens: int) -> tuple[int, int]:
    """(rows per block, columns per block) for blocks of at most `tokens` tokens."""
    if length <= tokens:
        return max(min(tokens // length, batch), 1), length
    return 1, tokens


@dataclasses.dataclass
class _Call:
    inputs: torch.Tensor           # input_ids [b, s] or inputs_embeds [b, s, h]
    input_name: str
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    cache: LatentPagedCache
    cache_name: str
    rest: dict


def blocked_call(model, signature, cache_name: str, args, kwargs, prefill_tokens) -> _Call | None:
    """The call's pieces when this forward pass should run in blocks, else None."""
    try:
        bound = signature.bind(model, *args, **kwargs)
    except TypeError:
        return None
    arguments = dict(bound.arguments)
    arguments.pop("self", None)
    extra = arguments.pop("kwargs", {})
    arguments.update(extra)
    cache = arguments.get(cache_name)
    if cache is None and cache_name != "past_key_values":
        cache = arguments.get("past_key_values")
    if not isinstance(cache, LatentPagedCache) or cache._graph_step is not None or cache._window is not None:
        return None
    if isinstance(cache, HybridLatentCache):
        return None  # its linear-attention layers' states span the whole batch: rows() cannot split them
    if arguments.get("labels") is not None or arguments.get("logits_to_keep", 0) != 1:
        return None
    if any(arguments.get(name) for name in ("output_attentions", "output_hidden_states", "output_router_logits")):
        return None
    input_name = "input_ids" if arguments.get("input_ids") is not None else "inputs_embeds"
    inputs = arguments.get(input_name)
    if inputs is None or inputs.dim() < 2 or torch.is_grad_enabled():
        return None
    attention_mask = arguments.get("attention_mask")
    if attention_mask is not None and attention_mask.dim() != 2:
        return None
    batch, length = inputs.shape[:2]
    if prefill_tokens is not None:
        if (isinstance(prefill_tokens, bool) or not isinstance(prefill_tokens, int) or prefill_tokens < 0
                or prefill_tokens == 1):
            # 1 would make one-token blocks of a padded row's padding, which the cache takes for decode steps.
            raise ValueError(f"{ARGUMENT}: expected 0 (no blocks) or an int >= 2 (tokens per prefill block), got "
                             f"{prefill_tokens!r}")
        tokens = prefill_tokens
    elif inputs.device.type == "cuda" and batch * length > MIN_BLOCK_TOKENS:
        plan = budget(model, cache, batch, length)
        tokens = plan.tokens
        if batch * length > tokens:
            logger.info("hf_flashmla: %s x %s prompt tokens in blocks: %s", batch, length, plan)
    else:
        tokens = 0
    if tokens == 0 or batch * length <= tokens:
        return None
    position_ids = arguments.get("position_ids")
    for name in (input_name, "attention_mask", "position_ids", cache_name, "past_key_values", "logits_to_keep",
                 "return_dict"):
        arguments.pop(name, None)
    return _Call(inputs, input_name, attention_mask, position_ids, cache, cache_name, {**arguments, "_tokens": tokens})


def run_blocked(model, original, call: _Call):
    """The forward pass of `call` in blocks; returns the model's output with each row's last logits."""
    rest = dict(call.rest)
    tokens = rest.pop("_tokens")
    batch, length = call.inputs.shape[:2]
    cache = call.cache
    past = cache.get_seq_length()
    rows_per_block, width = block_shape(batch, length, tokens)
    positions = call.position_ids
    if positions is None:
        positions = torch.arange(past, past + length, device=call.inputs.device)[None, :]
    positions = positions.expand(batch, -1)
    last_logits, output = [], None
    with cache.all_or_nothing():  # one pass to the caller: a block that raises undoes the blocks before it
        cache.begin_batch(batch)
        for r0 in range(0, batch, rows_per_block):
            r1 = min(r0 + rows_per_block, batch)
            with cache.rows(r0, r1):
                for c0 in range(0, length, width):
                    c1 = min(c0 + width, length)
                    inputs = {call.input_name: call.inputs[r0:r1, c0:c1], "position_ids": positions[r0:r1, c0:c1],
                              call.cache_name: cache, "logits_to_keep": 1, "return_dict": True, **rest}
                    if call.attention_mask is not None:
                        mask_width = call.attention_mask.shape[1] - length + c1
                        inputs["attention_mask"] = call.attention_mask[r0:r1, :mask_width]
                    output = original(model, **inputs)
                    counters.add("prefill_blocks")
            last_logits.append(output.logits[:, -1:])
    output["logits"] = torch.cat(last_logits, dim=0)
    if call.cache_name in output:
        output[call.cache_name] = cache
    return output


def with_prefill_argument(signature):
    """The forward's signature plus the keyword-only prefill_tokens (so that generate() accepts and forwards
    it as a model argument)."""
    import inspect

    parameters = list(signature.parameters.values())
    added = inspect.Parameter(ARGUMENT, inspect.Parameter.KEYWORD_ONLY, default=None)
    position = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters))
    return signature.replace(parameters=parameters[:position] + [added] + parameters[position:])
