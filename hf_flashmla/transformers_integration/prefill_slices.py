"""Long prefill chunks in blocks of tokens inside each flash_mla attention layer: bounds transient memory.

The unsliced prefill (attention._prefill_attention) holds, for all b*s tokens of a chunk at once, the
projected queries [b, s, h, qk_head_dim] with their split/concatenated copies and the attention output
[b, s, h, v_head_dim] before o_proj: about 110 KB per token for DeepSeek-V3 in bf16, against 1.2 KB of
latent per token that the cache keeps. When a chunk has more than HF_FLASHMLA_PREFILL_TOKENS tokens in
total (b*s; default 0 = off: opt-in until its GPU memory and prefill time are measured), the layer instead:

- projects the latent [c_kv, k_pe] (kv_lora_rank + rope wide) of the whole chunk and writes it to the
  cache once, as the unsliced path does. One write per layer per forward pass keeps the cache's step model
  (the step opened by the first layer, rollback of a forward pass that raised, the per-device step
  tensors) exactly as it is;
- then runs query projection -> rope -> attention -> o_proj for blocks of at most that many tokens, and
  writes each block's o_proj output (hidden-size wide, what the layer returns anyway) into the output.

A block is several whole rows when a row fits (s <= limit), else consecutive column slices of one row.
Either way each row's K/V is expanded from the latent once (as the unsliced path does, one row at a time)
and reused by all slices of that row; a slice's queries see the row's stored history and the chunk's
tokens up to their own position (causal), so the result is the unsliced one.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from hf_flashmla.transformers_integration.attention import (_apply_rope, _dense_attention, _expand, _project_latent,
                                                          _project_query, call_counts)

ENV_VAR = "HF_FLASHMLA_PREFILL_TOKENS"
DEFAULT_PREFILL_TOKENS = 0  # off by default: the GPU-verified prefill path stays the default until blocks are measured on the H100


def _parse_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{ENV_VAR}: expected a non-negative integer (tokens per prefill block; 0 turns slicing "
                         f"off), got {text!r}")
    return value


PREFILL_TOKENS = _parse_limit(os.environ.get(ENV_VAR, str(DEFAULT_PREFILL_TOKENS)))


def wanted(num_tokens: int) -> bool:
    return 0 < PREFILL_TOKENS < num_tokens


def _latent(module, hidden_states, position_embeddings):
    """-> [b, s, kv_lora_rank + rope]: normalised c_kv and roped k_pe, as attention._project makes them."""
    batch, s = hidden_states.shape[:2]
    rope = module.qk_rope_head_dim
    c_kv, k_pe = _project_latent(module, hidden_states)
    k_pe = k_pe.view(batch, 1, s, rope)
    _, k_pe = _apply_rope(module, k_pe, k_pe, position_embeddings)  # rope is elementwise: q's part is unused
    return torch.cat((c_kv, k_pe.view(batch, s, rope).to(c_kv.dtype)), dim=-1)


def _query(module, hidden_states, position_embeddings):
    """-> q_nope [b, n, h, nope], roped q_pe [b, n, h, rope], as attention._project makes them."""
    q_nope, q_pe = _project_query(module, hidden_states)
    q_pe = q_pe.transpose(1, 2)
    q_pe, _ = _apply_rope(module, q_pe, q_pe[:, :1], position_embeddings)  # one head stands in for k
    return q_nope, q_pe.transpose(1, 2)


def _block_positions(position_embeddings, batch, rows, columns):
    """The rope tables of rows x columns: V3's (cos, sin) or V2's complex frequencies, [b or 1, s, *]."""
    def cut(table):
        if table.dim() >= 3 and table.shape[0] == batch:
            table = table[rows]
        return table[..., columns, :]

    if isinstance(position_embeddings, (tuple, list)):
        return type(position_embeddings)(cut(table) for table in position_embeddings)
    return cut(position_embeddings)


def _trailing_causal(module, q_nope, q_pe, key, value):
    """q [1, n, h, *] are the last n of key's L tokens, query i sees keys <= L - n + i: SDPA's lower-right
    causal variant, so no [n, L] mask is built for a slice deep into a long row."""
    n, length = q_nope.shape[1], key.shape[2]
    if n == length:
        return _dense_attention(module, q_nope, q_pe, key, value, None)
    query = torch.cat((q_nope, q_pe.to(q_nope.dtype)), dim=-1).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=causal_lower_right(n, length),
                                         scale=module.scaling)
    return out.transpose(1, 2)


class _RowAttention:
    """Attention of one row's queries in columns [c0, c1) of the chunk; the row's K/V are expanded once
    and kept while consecutive blocks belong to the same row."""

    def __init__(self, module, cache, latent, token_mask, step, state):
        self.module, self.cache, self.latent, self.step, self.state = module, cache, latent, step, state
        self.s = latent.shape[1]
        self.token_mask = token_mask  # no cache: the chunk's padding mask [b, s] or None
        self.rank = None
        if step is not None and not step.left_padded:
            mask = state.token_mask
            self.rank = (torch.arange(self.s, device=latent.device, dtype=torch.int32)[None, :] if mask is None
                         else mask.to(torch.int32).cumsum(dim=1, dtype=torch.int32) - 1)
        self._row, self._keys = None, None

    def _row_keys(self, row):
        """K/V [1, h, n, *] of the row's keys: its stored tokens (cache), or the chunk's columns (no cache)."""
        if self._row != row:
            if self.step is None:
                stored = self.latent[row:row + 1]
            elif self.step.lengths_before[row] == 0 and self.step.left_padded:
                count = self.step.lengths_after[row]
                stored = self.latent[row:row + 1, self.s - count:]  # its real tokens, written just now
            else:
                stored = self.cache.gather(self.module.layer_idx, self.state, self.step.lengths_after[row],
                                           rows=slice(row, row + 1))
            self._keys = None  # drop the previous row's K/V before expanding this one
            self._keys = _expand(self.module, stored)
            self._row = row
        return self._keys

    def __call__(self, row, q_nope, q_pe, c0, c1, out):
        """q_nope/q_pe [1, c1 - c0, h, *] of the row; writes [c1 - c0, h, v] into out (padding left as is)."""
        module, device = self.module, q_nope.device
        if self.step is None:
            key, value = self._row_keys(row)
            key, value = key[:, :, :c1], value[:, :, :c1]  # query c sees columns <= c
            if self.token_mask is None:
                out[:] = _trailing_causal(module, q_nope, q_pe, key, value)[0]
                return
            visible = torch.ones(c1 - c0, c1, dtype=torch.bool, device=device).tril(diagonal=c0)
            visible = visible & self.token_mask[row, None, :c1]
            out[:] = _dense_attention(module, q_nope, q_pe, key, value, visible[None])[0]
            return
        before, after = self.step.lengths_before[row], self.step.lengths_after[row]
        if not self.step.left_padded:
            # Any padding pattern: query c is the row's token before + rank[c] and sees keys up to it.
            key, value = self._row_keys(row)
            last_visible = self.state.seqlens_before[row] + self.rank[row, c0:c1]
            visible = torch.arange(after, device=device, dtype=torch.int32)[None, :] <= last_visible[:, None]
            out[:] = _dense_attention(module, q_nope, q_pe, key, value, visible[None])[0]
            return
        # Left padding: the row's real tokens are its last after - before columns, from column `first` on.
        first = self.s - (after - before)
        start = max(c0, first)
        if start >= c1:
            return
        key, value = self._row_keys(row)
        end = before + c1 - first  # the block's last real query is the row's token end - 1
        key, value = key[:, :, :end], value[:, :, :end]  # key index = the row's token index
        out[start - c0:] = _trailing_causal(module, q_nope[:, start - c0:], q_pe[:, start - c0:], key, value)[0]


def sliced_prefill(module, hidden_states, position_embeddings, cache, token_mask):
    """The layer's o_proj output [b, s, hidden] for a chunk of more than PREFILL_TOKENS tokens; cache is a
    LatentPagedCache (prefill path, not the paged kernel's) or None."""
    batch, s = hidden_states.shape[:2]
    latent = _latent(module, hidden_states, position_embeddings)
    step = state = None
    if cache is not None:
        _, step, state = cache.write(module.layer_idx, latent, token_mask)
    call_counts["dense"] += 1
    attend = _RowAttention(module, cache, latent, token_mask, step, state)
    rows_per_block, width = (PREFILL_TOKENS // s, s) if s <= PREFILL_TOKENS else (1, PREFILL_TOKENS)
    out = None
    for r0 in range(0, batch, rows_per_block):
        r1 = min(r0 + rows_per_block, batch)
        for c0 in range(0, s, width):
            c1 = min(c0 + width, s)
            positions = _block_positions(position_embeddings, batch, slice(r0, r1), slice(c0, c1))
            q_nope, q_pe = _query(module, hidden_states[r0:r1, c0:c1], positions)
            attn = q_nope.new_zeros(r1 - r0, c1 - c0, q_nope.shape[2], module.v_head_dim)
            for row in range(r0, r1):
                attend(row, q_nope[row - r0:row - r0 + 1], q_pe[row - r0:row - r0 + 1], c0, c1, attn[row - r0])
            del q_nope, q_pe
            part = module.o_proj(attn.reshape(r1 - r0, c1 - c0, -1).to(hidden_states.dtype))
            del attn
            if out is None:
                out = part.new_empty((batch, s) + tuple(part.shape[2:]))
            out[r0:r1, c0:c1] = part
            call_counts["prefill_blocks"] += 1
    return out
