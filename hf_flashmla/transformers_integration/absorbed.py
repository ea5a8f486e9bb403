"""W_UK / W_UV: the per-head blocks of kv_b_proj that the absorbed MLA form multiplies into q and out.

kv_b_proj maps the latent c (kv_lora_rank) to [k_nope (qk_nope_head_dim), v (v_head_dim)] per head, so
  q_nope . k_nope = (q_nope @ W_UK) . c      and      out = W_UV @ (sum_j p_j c_j).
The blocks are derived once per module (and again only if the weight tensor changes), dequantized
first when kv_b_proj holds FP8 weights with block scales.
"""
from __future__ import annotations

import torch

_FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                                       "float8_e5m2fnuz") if hasattr(torch, name))
_DEFAULT_FP8_BLOCK = (128, 128)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a tensor-parallel DTensor parameter (tp_plan), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def dense_weight(linear: torch.nn.Module, compute_dtype: torch.dtype) -> torch.Tensor:
    """kv_b_proj's weight [out, in] in compute_dtype (this rank's rows under tensor parallelism); FP8
    weights are multiplied by their scales."""
    weight = _local(linear.weight)
    if weight.dtype not in _FP8_DTYPES:
        return weight.detach().to(compute_dtype)
    scale = None
    for name in ("weight_scale_inv", "weight_scale", "scale_inv"):
        scale = getattr(linear, name, None)
        if scale is not None:
            break
    if scale is None:
        raise ValueError(f"kv_b_proj: FP8 weight ({weight.dtype}) without a weight_scale_inv/weight_scale tensor; "
                         f"cannot dequantize it for flash_mla")
    out_features, in_features = weight.shape
    dense = weight.detach().to(torch.float32)
    scale = _local(scale).detach().to(torch.float32)
    if scale.numel() == 1:
        dense = dense * scale.reshape(())
    elif scale.dim() == 1 and scale.shape[0] == out_features:  # per output channel
        dense = dense * scale[:, None]
    else:
        block = getattr(linear, "block_size", None) or _DEFAULT_FP8_BLOCK
        block_out, block_in = block
        expanded = scale.repeat_interleave(block_out, dim=0)[:out_features]
        expanded = expanded.repeat_interleave(block_in, dim=1)[:, :in_features]
        dense = dense * expanded
    return dense.to(compute_dtype)


class AbsorbedWeights:
    """w_uk [h, qk_nope, kv_lora_rank] and w_uv_t [h, kv_lora_rank, v_head_dim], in the compute dtype."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype, device: torch.device):
        weight = dense_weight(module.kv_b_proj, dtype).to(device)
        nope, v_dim, rank = module.qk_nope_head_dim, module.v_head_dim, module.kv_lora_rank
        # Heads from the weight, not module.num_heads: a tp_plan that shards kv_b_proj colwise (DeepSeek-V2's in every
        # supported release, DeepSeek-V3's from transformers 5.25 on) leaves each rank a whole number of heads' rows.
        heads = weight.shape[0] // (nope + v_dim)
        if weight.dim() != 2 or heads < 1 or tuple(weight.shape) != (heads * (nope + v_dim), rank):
            raise ValueError(f"kv_b_proj: expected weight shape (heads * {nope + v_dim}, {rank}), got "
                             f"{tuple(weight.shape)}")
        blocks = weight.view(heads, nope + v_dim, rank)
        self.w_uk = blocks[:, :nope, :].contiguous()
        self.w_uv_t = blocks[:, nope:, :].transpose(1, 2).contiguous()
        self.key = _weight_key(module, dtype, device)


def _weight_key(module, dtype, device):
    weight = _local(module.kv_b_proj.weight)
    return (weight.data_ptr(), weight._version, weight.dtype, dtype, device)


def absorbed_weights(module: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> AbsorbedWeights:
    cached = getattr(module, "_hf_flashmla_absorbed", None)
    if cached is not None and cached.key == _weight_key(module, dtype, device):
        return cached
    with torch.no_grad():
        weights = AbsorbedWeights(module, dtype, device)
    # A plain attribute (not a buffer): never saved, never moved by .to(); rebuilt if the weight changes.
    object.__setattr__(module, "_hf_flashmla_absorbed", weights)
    return weights
