"""The flash_mla forward of DeepSeek-V2/V3 attention: absorbed MLA over the paged latent cache.

Projections, norms and rope are the model's own (called through its modeling module, so the rope
variant of each release and config is kept: V2's complex rope, V3's rope_interleave on or off). Then:

- decode steps and short chunks (s <= DECODE_MAX_QUERY, real tokens left-aligned): the latent
  [c_kv, k_pe] goes to the pages, q_nope is absorbed through W_UK and concatenated with q_pe, and
  flash_mla_with_kvcache (the Hopper kernel, or the reference elsewhere) attends over the pages; its
  kv_lora_rank-wide output goes through W_UV and o_proj. The schedule (get_mla_metadata) is computed
  once per forward pass and device, shared by all layers.
- long chunks (prefill): the latent still goes to the pages, and attention runs dense (SDPA) on K/V
  expanded from the latent for this layer only, then dropped, as serving engines do.

Latents other than 512 + 64 can run only where the reference path runs (CPU, or HF_FLASHMLA_BACKEND=
reference): the reference is called directly for them, since the public API checks the kernel's 576.
"""
from __future__ import annotations

import os
import sys
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from hf_flashmla import interface
from hf_flashmla.backend import KERNEL, backend
from hf_flashmla.latent_cache import LatentPagedCache
from hf_flashmla.reference import mla_decode_reference
from hf_flashmla.transformers_integration.absorbed import absorbed_weights
from hf_flashmla.transformers_integration.compat import cache_kwarg

ATTN_IMPLEMENTATION = "flash_mla"
KERNEL_LATENT = (512, 64)
DECODE_MAX_QUERY = int(os.environ.get("HF_FLASHMLA_DECODE_MAX_QUERY", "16"))

# How often each path ran; tests and scripts/gpu_generate_check.py read it.
call_counts = {"paged_kernel": 0, "paged_reference": 0, "dense": 0, "dense_other_cache": 0, "prefill_blocks": 0}


def reset_call_counts():
    for key in call_counts:
        call_counts[key] = 0


def _apply_rope(module, q_pe, k_pe, position_embeddings):
    """q_pe [b, h, s, r], k_pe [b, 1, s, r] -> roped, exactly as the model's own forward does it."""
    modeling = sys.modules[type(module).__module__]
    if hasattr(modeling, "apply_rotary_emb"):  # DeepSeek-V2: complex frequencies
        return modeling.apply_rotary_emb(q_pe, k_pe, position_embeddings.to(q_pe.device))
    cos, sin = position_embeddings
    if module.config.rope_interleave:
        return modeling.apply_rotary_pos_emb_interleave(q_pe, k_pe, cos, sin)
    return modeling.apply_rotary_pos_emb(q_pe, k_pe, cos, sin)


def _project_query(module, hidden_states):
    """-> q_nope [b, s, h, nope], q_pe [b, s, h, rope] before rope."""
    batch, s = hidden_states.shape[:2]
    if module.q_lora_rank is None:
        q = module.q_proj(hidden_states)
    else:
        q = module.q_b_proj(module.q_a_layernorm(module.q_a_proj(hidden_states)))
    q = q.view(batch, s, -1, module.qk_head_dim)
    return torch.split(q, [module.qk_nope_head_dim, module.qk_rope_head_dim], dim=-1)


def _project_latent(module, hidden_states):
    """-> normalised c_kv [b, s, kv_lora_rank], k_pe [b, s, rope] before rope."""
    compressed = module.kv_a_proj_with_mqa(hidden_states)
    c_kv, k_pe = torch.split(compressed, [module.kv_lora_rank, module.qk_rope_head_dim], dim=-1)
    return module.kv_a_layernorm(c_kv), k_pe


def _project(module, hidden_states, position_embeddings):
    """-> q_nope [b, s, h, nope], q_pe [b, s, h, rope], latent [b, s, kv_lora_rank + rope]."""
    batch, s = hidden_states.shape[:2]
    q_nope, q_pe = _project_query(module, hidden_states)
    c_kv, k_pe = _project_latent(module, hidden_states)
    q_pe, k_pe = _apply_rope(module, q_pe.transpose(1, 2), k_pe.view(batch, 1, s, module.qk_rope_head_dim),
                             position_embeddings)
    latent = torch.cat((c_kv, k_pe.view(batch, s, module.qk_rope_head_dim).to(c_kv.dtype)), dim=-1)
    return q_nope, q_pe.transpose(1, 2), latent


def _expand(module, latent):
    """latent [b, n, rank + rope] -> key [b, h, n, nope + rope], value [b, h, n, v] (transient)."""
    batch, n, _ = latent.shape
    c_kv, k_pe = torch.split(latent, [module.kv_lora_rank, module.qk_rope_head_dim], dim=-1)
    # -1 heads: this rank's share when a tp_plan shards kv_b_proj colwise (module.num_heads is the total)
    kv = module.kv_b_proj(c_kv).view(batch, n, -1, module.qk_nope_head_dim + module.v_head_dim)
    k_nope, value = torch.split(kv.transpose(1, 2), [module.qk_nope_head_dim, module.v_head_dim], dim=-1)
    key = torch.cat((k_nope, k_pe[:, None, :, :].expand(-1, k_nope.shape[1], -1, -1).to(k_nope.dtype)), dim=-1)
    return key, value


def _dense_attention(module, q_nope, q_pe, key, value, visible):
    """q [b, s, h, *]; key/value [b, h, n, *]; visible bool [b, s, n] or None (plain causal, s == n)."""
    query = torch.cat((q_nope, q_pe.to(q_nope.dtype)), dim=-1).transpose(1, 2)
    if visible is None:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=module.scaling)
    else:
        # A query that sees no key (padding) would give NaN; let it see key 0 (its output is never used).
        blind = ~visible.any(dim=-1, keepdim=True)
        if key.shape[2] > 0:
            first = torch.zeros_like(visible)
            first[..., 0] = True
            visible = visible | (blind & first)
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=visible[:, None], scale=module.scaling)
        else:
            out = query.new_zeros(query.shape[:-1] + (value.shape[-1],))
    return out.transpose(1, 2)  # [b, s, h, v]


def _check_kernel_shapes(module, device):
    if (module.kv_lora_rank, module.qk_rope_head_dim) != KERNEL_LATENT:
        raise ValueError(
            f"attn_implementation='flash_mla': the kernel needs kv_lora_rank=512 and qk_rope_head_dim=64, this "
            f"model has kv_lora_rank={module.kv_lora_rank}, qk_rope_head_dim={module.qk_rope_head_dim}; only the "
            f"reference path (CPU, or HF_FLASHMLA_BACKEND=reference) serves other latent sizes")


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
    choice = backend(query)
    if (rank, module.qk_rope_head_dim) == KERNEL_LATENT:
        metadata = state.metadata.get(heads)
        if metadata is None:
            metadata = state.metadata[heads] = interface.get_mla_metadata(state.seqlens, s * heads, 1)
        out, _ = interface.flash_mla_with_kvcache(query, pool, state.block_table, state.seqlens, rank,
                                                  metadata[0], metadata[1], softmax_scale=module.scaling,
                                                  causal=True)
        call_counts["paged_kernel" if choice.name == KERNEL else "paged_reference"] += 1
    else:
        if choice.name == KERNEL:
            _check_kernel_shapes(module, query.device)
        out, _ = mla_decode_reference(query, pool, state.block_table, state.seqlens, rank, module.scaling, True)
        call_counts["paged_reference"] += 1
    # [h, b*s, rank] @ [h, rank, v] -> [b, s, h, v]
    attn = torch.bmm(out.reshape(batch * s, heads, rank).transpose(0, 1), weights.w_uv_t)
    return attn.transpose(0, 1).reshape(batch, s, heads, -1)


def _causal(s, device):
    return torch.ones(s, s, dtype=torch.bool, device=device).tril()


def _prefill_attention(module, q_nope, q_pe, cache, layer_idx, latent, token_mask):
    batch, s = q_nope.shape[:2]
    device = q_nope.device
    call_counts["dense"] += 1
    if cache is None:
        key, value = _expand(module, latent)
        visible = None if token_mask is None else _causal(s, device)[None] & token_mask[:, None, :]
        return _dense_attention(module, q_nope, q_pe, key, value, visible)

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
            key, value = _expand(module, latent[row:row + 1, s - count:])
            out[row, s - count:] = _dense_attention(module, q_nope_row, q_pe_row, key, value, None)[0]
            continue
        stored = cache.gather(layer_idx, state, after, rows=slice(row, row + 1))
        key, value = _expand(module, stored)
        # Query i of the chunk is token before + i: it sees keys 0 .. before + i (no [count, after] mask built).
        out[row, s - count:] = _trailing_causal(module, q_nope_row, q_pe_row, key, value)[0]
    return out


def _trailing_causal(module, q_nope, q_pe, key, value):
    """q [1, n, h, *] are the last n of key's L tokens, query i sees keys <= L - n + i: SDPA's lower-right
    causal variant, so no [n, L] mask is built for a block deep into a long row."""
    n, length = q_nope.shape[1], key.shape[2]
    if n == length:
        return _dense_attention(module, q_nope, q_pe, key, value, None)
    query = torch.cat((q_nope, q_pe.to(q_nope.dtype)), dim=-1).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=causal_lower_right(n, length),
                                         scale=module.scaling)
    return out.transpose(1, 2)


def _masked_prefill(module, q_nope, q_pe, cache, layer_idx, latent, step, state):
    """Any padding pattern (e.g. right padding): one masked SDPA over every row's stored tokens."""
    batch, s = q_nope.shape[:2]
    device = q_nope.device
    max_length = max(step.lengths_after)
    stored = cache.gather(layer_idx, state, max_length)
    key, value = _expand(module, stored)
    if state.token_mask is None:
        rank = torch.arange(s, device=device, dtype=torch.int32)[None, :].expand(batch, s)
    else:
        rank = state.token_mask.to(torch.int32).cumsum(dim=1, dtype=torch.int32) - 1
    last_visible = state.seqlens_before[:, None] + rank  # [b, s]
    key_index = torch.arange(max_length, device=device, dtype=torch.int32)
    visible = (key_index[None, None, :] <= last_visible[:, :, None]) & \
              (key_index[None, None, :] < state.seqlens[:, None, None])
    return _dense_attention(module, q_nope, q_pe, key, value, visible)


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
    key, value = _expand(module, full)
    key_index = torch.arange(n, device=q_nope.device)
    query_index = torch.arange(n - s, n, device=q_nope.device)
    visible = (key_index[None, :] <= query_index[:, None])[None].expand(batch, s, n)
    if mask_2d is not None:
        visible = visible & mask_2d[:, -n:][:, None, :].to(torch.bool)
    call_counts["dense_other_cache"] += 1
    return _dense_attention(module, q_nope, q_pe, key, value, visible)


_warned_other_cache = False


def flash_mla_forward(module, hidden_states, position_embeddings=None, attention_mask=None, cache=None,
                      past_key_values=None, **kwargs):
    """Replaces DeepseekV2Attention/DeepseekV3Attention.forward when config._attn_implementation is
    'flash_mla'. attention_mask is what hf_flashmla's mask function returns: the 2D padding mask
    [b, past + s] (bool), or None when there is no padding information."""
    global _warned_other_cache
    if cache is None:
        cache = past_key_values
    kwargs.pop("position_ids", None)
    kwargs.pop("use_cache", None)
    if kwargs.get("output_attentions"):
        raise ValueError("output_attentions: attn_implementation='flash_mla' never forms the attention weights; "
                         "use attn_implementation='eager' to get them")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(f"attention_mask: attn_implementation='flash_mla' takes a 2D padding mask [batch, length], "
                         f"got shape {tuple(attention_mask.shape)} (a prepared 4D mask is not supported)")
    batch, s = hidden_states.shape[:2]
    token_mask = None if attention_mask is None else attention_mask[:, -s:].to(torch.bool)
    q_nope, q_pe, latent = _project(module, hidden_states, position_embeddings)

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
    attn = attn.reshape(batch, s, -1).to(hidden_states.dtype)
    return module.o_proj(attn), None


def _use_pages(cache: LatentPagedCache, layer_idx: int, batch: int, s: int, token_mask) -> bool:
    """Short chunks go to the paged kernel when the kernel's causal rule (query t sees keys <= L - s + t)
    is exact: every row's real tokens at its end (left padding). The step (opened by the first layer of
    the forward pass) holds that answer, so all layers take the same path."""
    step = cache.step_for(layer_idx, batch, s, token_mask)
    return s <= DECODE_MAX_QUERY and step.left_padded

