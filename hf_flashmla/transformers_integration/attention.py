"""The flash_mla forward of a multi-head latent attention module: absorbed MLA over the paged latent cache.

Projections, norms, rope and the family's own scales and gates are the module's (mla_adapter.py, which
calls the modeling module's own rope functions, so each release's and config's variant is kept). Then:

- decode steps and short chunks (s <= DECODE_MAX_QUERY, real tokens left-aligned): the latent
  [c_kv, k_pe] goes to the pages, q_nope is absorbed through W_UK and concatenated with q_pe, and
  flash_mla_with_kvcache (the Hopper kernel, or the reference elsewhere) attends over the pages; its
  kv_lora_rank-wide output goes through W_UV and o_proj. The schedule (get_mla_metadata) is computed
  once per forward pass and device, shared by all layers.
- long chunks (prefill): the latent still goes to the pages, and attention runs dense (SDPA) on K/V
  expanded from the latent for this layer only, then dropped, as serving engines do.

With an FP8 cache (LatentPagedCache(kv_cache_dtype="fp8_e4m3")) the pages hold the quantized latent, and the
dense prefill attends to the latent's FP8 round trip (cache.stored_latent), so that every route (one prefill or
blocks, paged or dense, eager or graphs) attends to the same keys: those the pages give back.

Latents other than 512 + 64 (MiniCPM3's 256 + 32, Mistral-4's 256 + 64) skip the public API, which checks the
kernel's 576: on CUDA they take the Triton kernel where it takes their shape (triton_decode.supports_latent), on
Hopper too, else the reference.
"""
from __future__ import annotations

import warnings

import torch

from hf_flashmla import interface
from hf_flashmla.dispatch import KERNEL, TRITON, backend, triton_import_error
from hf_flashmla.latent_cache import LatentPagedCache
from hf_flashmla.reference import decode_unchecked
from hf_flashmla.transformers_integration.absorbed import absorbed_weights
from hf_flashmla.transformers_integration.compat import cache_kwarg
from hf_flashmla.transformers_integration.counters import counters
from hf_flashmla.transformers_integration.dense import causal, dense_attention, trailing_causal
from hf_flashmla.transformers_integration.mla_adapter import expand_latent, gate_output, project, softmax_scale

ATTN_IMPLEMENTATION = "flash_mla"
KERNEL_LATENT = (512, 64)
DECODE_MAX_QUERY = 16  # chunks up to this many tokens go to the paged kernel (generate()'s decode steps and drafts)


def _other_latent_decode(module, query, pool, state, is_fp8, choice):
    """Decode over the pages for a latent other than 512 + 64: the Triton kernel where it takes the shape (any
    CUDA device it runs on, Hopper included: the sm_90 kernel is DeepSeek's shape only), else the reference (on
    Hopper only when asked for: HF_FLASHMLA_BACKEND=reference)."""
    rank, rope = module.kv_lora_rank, module.qk_rope_head_dim
    triton_runs = choice.name == TRITON or (choice.name == KERNEL and triton_import_error() is None)
    if triton_runs:
        from hf_flashmla import triton_decode  # Triton is optional and slow to import

        if triton_decode.supports_latent(rank, rope):
            counters.add("paged_triton")
            return triton_decode.decode_on_device(query, pool, state.block_table, state.seqlens, rank,
                                                  softmax_scale(module), True, is_fp8)[0]
    if choice.name == KERNEL:  # Hopper: the reference is opt-in there (it is slow), not a silent fallback
        raise ValueError(
            f"attn_implementation='flash_mla': the sm_90 kernel needs kv_lora_rank=512 and qk_rope_head_dim=64, and "
            f"the Triton kernel powers of two (16..512, 16..64); this model has kv_lora_rank={rank}, "
            f"qk_rope_head_dim={rope}"
            + ("" if triton_runs else f" and Triton is not importable ({triton_import_error()})")
            + ": set HF_FLASHMLA_BACKEND=reference to run it on the PyTorch reference")
    counters.add("paged_reference")
    return decode_unchecked(query, pool, state.block_table, state.seqlens, rank, softmax_scale(module), True,
                                is_fp8)[0]


def _paged_attention(module, q_nope, q_pe, cache, layer_idx, latent, token_mask):
    pool, step, state = cache.write(layer_idx, latent, token_mask)
    weights = absorbed_weights(module, q_nope.dtype, q_nope.device)
    batch, s, heads, _ = q_nope.shape
    if weights.w_uk.shape[0] != heads:
        raise ValueError(f"kv_b_proj: holds {weights.w_uk.shape[0]} heads but the query projection gives {heads}; a "
                         f"tp_plan must shard q_proj/q_b_proj and kv_b_proj alike (colwise)")
    # [h, b*s, nope] @ [h, nope, rank] -> [b, s, h, rank]
    q_abs = torch.bmm(q_nope.reshape(batch * s, heads, -1).transpose(0, 1), weights.w_uk)
    q_abs = q_abs.transpose(0, 1).reshape(batch, s, heads, -1)
    query = torch.cat((q_abs, q_pe.to(q_abs.dtype)), dim=-1).contiguous()
    rank = module.kv_lora_rank
    choice = backend(query, is_fp8_kvcache=cache.is_fp8)
    if (rank, module.qk_rope_head_dim) == KERNEL_LATENT:
        metadata = state.metadata.get(heads)
        if metadata is None:
            metadata = state.metadata[heads] = interface.get_mla_metadata(state.seqlens, s * heads, 1)
        out, _ = interface.flash_mla_with_kvcache(query, pool, state.block_table, state.seqlens, rank,
                                                  metadata[0], metadata[1], softmax_scale=softmax_scale(module),
                                                  causal=True, is_fp8_kvcache=cache.is_fp8)
        counters.add({KERNEL: "paged_kernel", TRITON: "paged_triton"}.get(choice.name, "paged_reference"))
    else:
        out = _other_latent_decode(module, query, pool, state, cache.is_fp8, choice)
    # [h, b*s, rank] @ [h, rank, v] -> [b, s, h, v]
    attn = torch.bmm(out.reshape(batch * s, heads, rank).transpose(0, 1), weights.w_uv_t)
    return attn.transpose(0, 1).reshape(batch, s, heads, -1)


def _prefill_attention(module, q_nope, q_pe, cache, layer_idx, latent, token_mask):
    batch, s = q_nope.shape[:2]
    device = q_nope.device
    counters.add("dense")
    if cache is None:
        key, value = expand_latent(module, latent)
        visible = None if token_mask is None else causal(s, device)[None] & token_mask[:, None, :]
        return dense_attention(module, q_nope, q_pe, key, value, visible)

    _, step, state = cache.write(layer_idx, latent, token_mask)
    if not step.left_padded:
        return _masked_prefill(module, q_nope, q_pe, cache, layer_idx, latent, step, state)
    # Row by row over the real tokens only (they are each row's last `count` tokens): no mask is built,
    # SDPA takes its causal kernels, and K/V are expanded for one row at a time.
    out = q_nope.new_zeros(batch, s, q_nope.shape[2], module.v_head_dim)  # this rank's heads under tp_plan
    for row in range(batch):
        before, after = step.lengths_before[row], step.lengths_after[row]
        count = after - before
        if count == 0:
            continue
        q_nope_row, q_pe_row = q_nope[row:row + 1, s - count:], q_pe[row:row + 1, s - count:]
        if before == 0:
            key, value = expand_latent(module, cache.stored_latent(latent[row:row + 1, s - count:]))
            out[row, s - count:] = dense_attention(module, q_nope_row, q_pe_row, key, value, None)[0]
            continue
        stored = cache.gather(layer_idx, state, after, rows=slice(row, row + 1), dtype=latent.dtype)
        key, value = expand_latent(module, stored)
        # Query i of the chunk is token before + i: it sees keys 0 .. before + i (no [count, after] mask built).
        out[row, s - count:] = trailing_causal(module, q_nope_row, q_pe_row, key, value)[0]
    return out


def _masked_prefill(module, q_nope, q_pe, cache, layer_idx, latent, step, state):
    """Any padding pattern (e.g. right padding): one masked SDPA over every row's stored tokens."""
    batch, s = q_nope.shape[:2]
    device = q_nope.device
    max_length = max(step.lengths_after)
    stored = cache.gather(layer_idx, state, max_length, dtype=latent.dtype)
    key, value = expand_latent(module, stored)
    if state.token_mask is None:
        rank = torch.arange(s, device=device, dtype=torch.int32)[None, :].expand(batch, s)
    else:
        rank = state.token_mask.to(torch.int32).cumsum(dim=1, dtype=torch.int32) - 1
    last_visible = state.seqlens_before[:, None] + rank  # [b, s]
    key_index = torch.arange(max_length, device=device, dtype=torch.int32)
    visible = (key_index[None, None, :] <= last_visible[:, :, None]) & \
              (key_index[None, None, :] < state.seqlens[:, None, None])
    return dense_attention(module, q_nope, q_pe, key, value, visible)


def _other_cache_attention(module, q_nope, q_pe, cache, layer_idx, latent, mask_2d, kwargs):
    """A cache that is not a LatentPagedCache (e.g. a DynamicCache or a StaticCache passed by the user): it
    takes the latent through the stock cache.update protocol and attention runs dense. Correct, not paged.

    A fixed-size layer (StaticCache) returns its whole buffer, token i in slot i: the first past + s slots
    are the tokens. A layer that keeps fewer tokens than it was given (a sliding window) cannot be served."""
    batch, s = q_nope.shape[:2]
    argument = cache_kwarg()
    sliding = cache.is_sliding  # one entry per layer created so far (a DynamicCache creates them lazily)
    if layer_idx < len(sliding) and sliding[layer_idx]:
        raise ValueError(f"{argument}: attn_implementation='flash_mla' attends over every stored token; this "
                         f"{type(cache).__name__}'s layer {layer_idx} is a sliding window. Pass no cache (generate() "
                         f"creates a LatentPagedCache) or a DynamicCache without sliding layers.")
    past = int(cache.get_seq_length(layer_idx))
    capacity = cache.get_max_length(layer_idx)
    if capacity is not None and capacity >= 0 and past + s > capacity:
        raise ValueError(f"{argument}: this {type(cache).__name__} holds {capacity} tokens per sequence; layer "
                         f"{layer_idx} has {past} and this step adds {s}. Create it with a larger max_cache_len, or "
                         f"pass no cache (generate() creates a LatentPagedCache that grows).")
    c_kv, k_pe = torch.split(latent, [module.kv_lora_rank, module.qk_rope_head_dim], dim=-1)
    try:
        c_kv, k_pe = cache.update(c_kv[:, None], k_pe[:, None], module.layer_idx, kwargs=kwargs)
    except TypeError:  # releases before 5.24 take no kwargs
        c_kv, k_pe = cache.update(c_kv[:, None], k_pe[:, None], module.layer_idx)
    n = past + s
    if c_kv.shape[2] != n and (c_kv.shape[2] < n or capacity is None or capacity < 0):
        raise ValueError(f"{argument}: this {type(cache).__name__} returned {c_kv.shape[2]} positions for layer "
                         f"{layer_idx} after storing {n} tokens; attn_implementation='flash_mla' serves caches that "
                         f"return every stored token (DynamicCache, StaticCache) or a LatentPagedCache.")
    full = torch.cat((c_kv[:, 0, :n], k_pe[:, 0, :n]), dim=-1)
    key, value = expand_latent(module, full)
    key_index = torch.arange(n, device=q_nope.device)
    query_index = torch.arange(n - s, n, device=q_nope.device)
    visible = (key_index[None, :] <= query_index[:, None])[None].expand(batch, s, n)
    if mask_2d is not None:
        visible = visible & mask_2d[:, -n:][:, None, :].to(torch.bool)
    counters.add("dense_other_cache")
    return dense_attention(module, q_nope, q_pe, key, value, visible)


_warned_other_cache = False


def flash_mla_forward(module, hidden_states, position_embeddings=None, attention_mask=None, cache=None,
                      past_key_values=None, **kwargs):
    """Replaces the forward of a served MLA attention class (see families.py) when config._attn_implementation
    is 'flash_mla'. attention_mask is what hf_flashmla's mask function returns: the 2D padding mask
    [b, past + s] (bool), or None when there is no padding information. position_embeddings is None for a
    NoPE family (Kimi-Linear); position_ids is used by a family that scales its query by position (Mistral-4)."""
    global _warned_other_cache
    if cache is None:
        cache = past_key_values
    position_ids = kwargs.pop("position_ids", None)
    kwargs.pop("use_cache", None)
    if kwargs.get("output_attentions"):
        raise ValueError("output_attentions: attn_implementation='flash_mla' never forms the attention weights; "
                         "use attn_implementation='eager' to get them")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(f"attention_mask: attn_implementation='flash_mla' takes a 2D padding mask [batch, length], "
                         f"got shape {tuple(attention_mask.shape)} (a prepared 4D mask is not supported)")
    batch, s = hidden_states.shape[:2]
    if attention_mask is not None and (cache is None or isinstance(cache, LatentPagedCache)):
        width = s if cache is None else cache.mask_width(s)
        if attention_mask.shape[-1] != width:
            raise ValueError(f"attention_mask: expected {width} columns (the {width - s} tokens before this forward "
                             f"pass, padding included, and its {s} new ones), got shape {tuple(attention_mask.shape)}")
    token_mask = None if attention_mask is None else attention_mask[:, -s:].to(torch.bool)
    q_nope, q_pe, latent = project(module, hidden_states, position_embeddings, position_ids)

    if cache is not None and not isinstance(cache, LatentPagedCache):
        if not _warned_other_cache:
            warnings.warn(f"attn_implementation='flash_mla' got a {type(cache).__name__}: attention runs dense on K/V "
                          f"expanded from it (correct but not paged). generate() creates a LatentPagedCache by "
                          f"itself; pass hf_flashmla.LatentPagedCache(model.config) to supply your own.")
            _warned_other_cache = True
        attn = _other_cache_attention(module, q_nope, q_pe, cache, module.layer_idx, latent, attention_mask, kwargs)
    elif cache is not None and hidden_states.requires_grad:
        raise ValueError("hidden_states: attn_implementation='flash_mla' with a cache is inference-only (the paged "
                         "kernel has no backward); run generate()/forward under torch.no_grad(), or use_cache=False")
    elif cache is not None and _use_pages(cache, module.layer_idx, batch, s, token_mask):
        attn = _paged_attention(module, q_nope, q_pe, cache, module.layer_idx, latent, token_mask)
    else:
        attn = _prefill_attention(module, q_nope, q_pe, cache, module.layer_idx, latent, token_mask)
    attn = gate_output(module, hidden_states, attn.to(hidden_states.dtype))
    return module.o_proj(attn.reshape(batch, s, -1)), None


def _use_pages(cache: LatentPagedCache, layer_idx: int, batch: int, s: int, token_mask) -> bool:
    """Short chunks go to the paged kernel when the kernel's causal rule (query t sees keys <= L - s + t)
    is exact: every row's real tokens at its end (left padding). The step (opened by the first layer of
    the forward pass) holds that answer, so all layers take the same path."""
    step = cache.step_for(layer_idx, batch, s, token_mask)
    return s <= DECODE_MAX_QUERY and step.left_padded
