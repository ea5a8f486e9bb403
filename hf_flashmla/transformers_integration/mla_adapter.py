"""One multi-head latent attention (MLA) module's maths, read from its structure.

Every MLA family in Transformers builds the same parts, under the same attribute names:
- the query: q_proj, or q_a_proj -> q_a_layernorm -> q_b_proj; split per head into [nope, rope];
- the latent: kv_a_proj_with_mqa -> split [c_kv, k_pe] -> kv_a_layernorm on c_kv;
- kv_b_proj (its W_UK / W_UV blocks: absorbed.py), o_proj, and module.scaling (the softmax scale).

The families differ in a few places only. Each is one hook below, and which hooks a module takes is read from
the names its own forward reads (the code object's co_names), so serving a family needs no code of its own:
- rope: DeepSeek-V2's complex rope (apply_rotary_emb); interleaved or plain cos/sin rope, fixed or chosen by
  config.rope_interleave (the model's own apply_rotary_pos_emb[_interleave]); or none (Kimi-Linear's MLA is
  NoPE: k_pe is stored and dotted unrotated);
- LongCat-Flash: the query and the normalised c_kv are scaled by mla_scale_q_lora / mla_scale_kv_lora;
- Mistral-4: the query is scaled per position (Llama-4 attention scaling, get_llama_4_attn_scale);
- Bailing-hybrid: a per-head sigmoid gate, g_proj(hidden_states), on the attention output before o_proj.

A forward that reads any other name (a DSA indexer, attention sinks, a sliding window, another gate, ...)
does maths this adapter does not know; `mla_form` raises UnservedAttention saying what it reads. The rope
functions are the modeling module's own, so each release's variant is what runs.

Shapes: hidden_states [b, s, hidden]; position_embeddings as the model passes them ((cos, sin), or V2's
complex frequencies, or None for NoPE); queries [b, s, h, *]; latent [b, s, kv_lora_rank + rope].
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass

import torch

ROPE_COMPLEX = "complex"        # DeepSeek-V2: apply_rotary_emb with complex frequencies
ROPE_INTERLEAVE = "interleave"  # apply_rotary_pos_emb_interleave always
ROPE_PLAIN = "plain"            # apply_rotary_pos_emb (rotate_half) always
ROPE_BY_CONFIG = "by_config"    # interleaved when config.rope_interleave, plain otherwise
ROPE_NONE = "none"              # NoPE: k_pe and q_pe are used unrotated

# Names every MLA forward reads: its parts, shapes, the cache update and the attention-interface call.
_COMMON_NAMES = frozenset({
    "ALL_ATTENTION_FUNCTIONS", "_attn_implementation", "attention_dropout", "cat", "config", "contiguous", "device",
    "dtype", "eager_attention_forward", "expand_kv", "float", "get_interface", "kv_a_layernorm",
    "kv_a_proj_with_mqa", "kv_b_proj", "kv_lora_rank", "layer_idx", "o_proj", "q_a_layernorm", "q_a_proj",
    "q_b_proj", "q_lora_rank", "q_proj", "qk_head_dim", "qk_nope_head_dim", "qk_rope_head_dim", "reshape",
    "scaling", "shape", "split", "to", "torch", "training", "transpose", "unsqueeze", "update", "v_head_dim",
    "view",
})
_ROPE_NAMES = frozenset({"apply_rotary_emb", "apply_rotary_pos_emb", "apply_rotary_pos_emb_interleave",
                         "rope_interleave"})
_LORA_SCALE_NAMES = frozenset({"mla_scale_q_lora", "mla_scale_kv_lora"})
_POSITION_SCALE_NAMES = frozenset({"get_llama_4_attn_scale", "rope_parameters", "get"})
_HEAD_GATE_NAMES = frozenset({"g_proj", "sigmoid"})
_KNOWN_NAMES = _COMMON_NAMES | _ROPE_NAMES | _LORA_SCALE_NAMES | _POSITION_SCALE_NAMES | _HEAD_GATE_NAMES
_REQUIRED_NAMES = frozenset({"kv_a_proj_with_mqa", "kv_a_layernorm", "o_proj"})
# expand_kv (the stock K/V expansion) reads only these; a family whose expansion differs is not this maths.
_EXPAND_NAMES = frozenset({"copy_", "expand", "kv_b_proj", "new_empty", "qk_nope_head_dim", "qk_rope_head_dim",
                           "shape", "split", "torch", "transpose", "v_head_dim", "view"})
SPARSE_MARKER = "indexer"  # DSA: a lightning indexer picks top-k keys per query


class UnservedAttention(ValueError):
    """An attention class flash_mla does not serve; `sparse` when it is DSA (top-k sparse) MLA."""

    def __init__(self, message: str, sparse: bool = False):
        super().__init__(message)
        self.sparse = sparse


@dataclass(frozen=True)
class MLAForm:
    """What an MLA module's forward does beyond the common parts (see the module docstring)."""
    rope: str
    lora_scales: bool = False            # LongCat-Flash
    position_query_scale: bool = False   # Mistral-4
    head_gate: bool = False              # Bailing-hybrid


def original_forward(attention_class):
    """The class's own forward: past hf_flashmla's dispatching wrapper and Transformers' decorators."""
    forward = attention_class.forward
    forward = getattr(forward, "_hf_flashmla_original", forward)
    return inspect.unwrap(forward)


def _names(function) -> frozenset:
    code = getattr(function, "__code__", None)
    return frozenset(code.co_names) if code is not None else frozenset()


def reads_latent_projection(attention_class) -> bool:
    """The structural test: the class' forward projects hidden states through kv_a_proj_with_mqa."""
    return "kv_a_proj_with_mqa" in _names(original_forward(attention_class))


def mla_form(attention_class) -> MLAForm:
    """The hooks an MLA attention class takes, from the names its forward reads; UnservedAttention if it reads a
    name outside the common MLA parts and the known hooks (sparse=True for a DSA indexer)."""
    name = attention_class.__name__
    names = _names(original_forward(attention_class))
    if not _REQUIRED_NAMES <= names:
        raise UnservedAttention(f"{name}'s forward does not project through kv_a_proj_with_mqa -> kv_a_layernorm -> "
                                f"o_proj; it is not multi-head latent attention")
    if SPARSE_MARKER in names:
        raise UnservedAttention(f"{name}'s indexer picks the top-k keys of every query", sparse=True)
    unknown = names - _KNOWN_NAMES
    expand = getattr(attention_class, "expand_kv", None)
    if "expand_kv" in names and expand is not None:
        unknown |= _names(inspect.unwrap(expand)) - _EXPAND_NAMES
    if unknown:
        raise UnservedAttention(f"{name}'s forward reads {sorted(unknown)}, beyond the MLA parts and hooks "
                                f"hf_flashmla knows (hf_flashmla.transformers_integration.mla_adapter)")
    if "apply_rotary_emb" in names:
        rope = ROPE_COMPLEX
    elif "rope_interleave" in names:
        rope = ROPE_BY_CONFIG
    elif "apply_rotary_pos_emb_interleave" in names:
        rope = ROPE_INTERLEAVE
    elif "apply_rotary_pos_emb" in names:
        rope = ROPE_PLAIN
    else:
        rope = ROPE_NONE
    return MLAForm(rope=rope, lora_scales=_LORA_SCALE_NAMES <= names,
                   position_query_scale="get_llama_4_attn_scale" in names, head_gate="g_proj" in names)


_forms: dict[type, MLAForm] = {}


def form_of(module) -> MLAForm:
    """mla_form of the module's class, computed once per class."""
    cls = type(module)
    form = _forms.get(cls)
    if form is None:
        form = _forms[cls] = mla_form(cls)
    return form


def _modeling(module):
    return sys.modules[type(module).__module__]


def rope(module, q_pe, k_pe, position_embeddings):
    """q_pe [b, h, s, rope], k_pe [b, 1, s, rope] -> both roped, by the call the module's forward makes. Rope is
    elementwise per head, so a caller that needs one of the two may pass a one-head slice as the other."""
    form = form_of(module)
    if form.rope == ROPE_NONE:
        return q_pe, k_pe
    modeling = _modeling(module)
    if form.rope == ROPE_COMPLEX:
        return modeling.apply_rotary_emb(q_pe, k_pe, position_embeddings.to(q_pe.device))
    cos, sin = position_embeddings
    interleave = form.rope == ROPE_INTERLEAVE or (form.rope == ROPE_BY_CONFIG and module.config.rope_interleave)
    if interleave:
        return modeling.apply_rotary_pos_emb_interleave(q_pe, k_pe, cos, sin)
    return modeling.apply_rotary_pos_emb(q_pe, k_pe, cos, sin)


def query_heads(module, hidden_states):
    """-> q_nope [b, s, h, nope], q_pe [b, s, h, rope] before rope (LongCat's lora scale applied). -1 heads: this
    rank's share when a tp_plan shards the query projection colwise."""
    batch, s = hidden_states.shape[:2]
    if getattr(module, "q_proj", None) is not None:
        q = module.q_proj(hidden_states)
    else:
        q = module.q_b_proj(module.q_a_layernorm(module.q_a_proj(hidden_states)))
    q = q.view(batch, s, -1, module.qk_head_dim)
    q_nope, q_pe = torch.split(q, [module.qk_nope_head_dim, module.qk_rope_head_dim], dim=-1)
    if form_of(module).lora_scales:
        q_nope, q_pe = q_nope * module.mla_scale_q_lora, q_pe * module.mla_scale_q_lora
    return q_nope, q_pe


def latent_parts(module, hidden_states):
    """-> c_kv [b, s, kv_lora_rank] normalised (and LongCat-scaled), k_pe [b, s, rope] before rope."""
    compressed = module.kv_a_proj_with_mqa(hidden_states)
    c_kv, k_pe = torch.split(compressed, [module.kv_lora_rank, module.qk_rope_head_dim], dim=-1)
    c_kv = module.kv_a_layernorm(c_kv)
    if form_of(module).lora_scales:
        c_kv = c_kv * module.mla_scale_kv_lora
    return c_kv, k_pe


def scale_query_by_position(module, q_nope, q_pe, position_ids):
    """Mistral-4's per-position query scale (after rope, on the whole query); other families: unchanged."""
    if not form_of(module).position_query_scale:
        return q_nope, q_pe
    if position_ids is None:
        raise ValueError(f"position_ids: {type(module).__name__} scales the query by position (Llama-4 attention "
                         f"scaling); call it with position_ids, as its decoder layer does")
    parameters = module.config.rope_parameters
    scale = _modeling(module).get_llama_4_attn_scale(position_ids, parameters.get("llama_4_scaling_beta"),
                                                     parameters.get("original_max_position_embeddings"))
    scale = scale[:, 0].to(q_nope.dtype)  # [b or 1, 1, s, 1] -> [b or 1, s, 1]: per token, all heads
    return q_nope * scale[..., None], q_pe * scale[..., None].to(q_pe.dtype)


def project_query(module, hidden_states, position_embeddings, position_ids=None):
    """-> q_nope [b, s, h, nope], q_pe [b, s, h, rope] roped, as the module's forward makes its query."""
    q_nope, q_pe = query_heads(module, hidden_states)
    q_pe = q_pe.transpose(1, 2)
    q_pe, _ = rope(module, q_pe, q_pe[:, :1], position_embeddings)  # one head stands in for k
    return scale_query_by_position(module, q_nope, q_pe.transpose(1, 2), position_ids)


def project_latent(module, hidden_states, position_embeddings):
    """-> latent [b, s, kv_lora_rank + rope]: the row the cache stores (normalised c_kv, roped k_pe)."""
    batch, s = hidden_states.shape[:2]
    c_kv, k_pe = latent_parts(module, hidden_states)
    k_pe = k_pe.reshape(batch, 1, s, module.qk_rope_head_dim)
    _, k_pe = rope(module, k_pe, k_pe, position_embeddings)  # rope is elementwise: q's output is unused
    return torch.cat((c_kv, k_pe.reshape(batch, s, -1).to(c_kv.dtype)), dim=-1)


def project(module, hidden_states, position_embeddings, position_ids=None):
    """project_query and project_latent in one rope call: -> q_nope, q_pe [b, s, h, *], latent [b, s, rank + rope]."""
    batch, s = hidden_states.shape[:2]
    q_nope, q_pe = query_heads(module, hidden_states)
    c_kv, k_pe = latent_parts(module, hidden_states)
    q_pe, k_pe = rope(module, q_pe.transpose(1, 2), k_pe.reshape(batch, 1, s, module.qk_rope_head_dim),
                      position_embeddings)
    q_nope, q_pe = scale_query_by_position(module, q_nope, q_pe.transpose(1, 2), position_ids)
    latent = torch.cat((c_kv, k_pe.reshape(batch, s, -1).to(c_kv.dtype)), dim=-1)
    return q_nope, q_pe, latent


def expand_latent(module, latent):
    """latent [b, n, rank + rope] -> key [b, h, n, nope + rope], value [b, h, n, v] (transient, for dense prefill).
    -1 heads: this rank's share when a tp_plan shards kv_b_proj colwise (module.num_heads is the total)."""
    batch, n, _ = latent.shape
    c_kv, k_pe = torch.split(latent, [module.kv_lora_rank, module.qk_rope_head_dim], dim=-1)
    kv = module.kv_b_proj(c_kv).view(batch, n, -1, module.qk_nope_head_dim + module.v_head_dim)
    k_nope, value = torch.split(kv.transpose(1, 2), [module.qk_nope_head_dim, module.v_head_dim], dim=-1)
    key = torch.cat((k_nope, k_pe[:, None, :, :].expand(-1, k_nope.shape[1], -1, -1).to(k_nope.dtype)), dim=-1)
    return key, value


def gate_output(module, hidden_states, attn):
    """attn [b, s, h, v] -> Bailing-hybrid's per-head sigmoid gate applied, as its forward does before o_proj;
    other families: unchanged."""
    if not form_of(module).head_gate:
        return attn
    gate = torch.sigmoid(module.g_proj(hidden_states).float()).to(hidden_states.dtype)
    return attn * gate[..., None].to(attn.dtype)


def softmax_scale(module) -> float:
    return module.scaling
