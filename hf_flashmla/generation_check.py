"""flash_mla against a baseline attention on one model: greedy tokens, logits, kernel calls, speed.

Used by `hf-flashmla check-generate`, the GPU integration tests and the main job.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from hf_flashmla import _ops
from hf_flashmla.transformers_integration import attn_implementation_for, cache_kwarg
from hf_flashmla.transformers_integration.counters import counters


@torch.no_grad()
def teacher_forced_logits(model, implementation, ids, mask, forced_tokens):
    """Last-position logits [b, 1 + n, vocab] (float32) of a prefill of ids, then one decode step per
    column of forced_tokens [b, n], through the implementation's own cache (LatentPagedCache for
    flash_mla), with positions and padding handled as generate() does. Both implementations see the
    same tokens, so their logits compare at every step, whatever either would have chosen."""
    from transformers import DynamicCache

    from hf_flashmla.hybrid_cache import latent_cache_for

    model.set_attn_implementation(attn_implementation_for(model.config, implementation))
    cache = latent_cache_for(model.config) if implementation == "flash_mla" else DynamicCache(config=model.config)
    name = cache_kwarg()
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{name: cache})
    logits = [out.logits[:, -1].float()]
    for step in range(forced_tokens.shape[1]):
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position = mask.long().sum(dim=-1, keepdim=True) - 1
        out = model(input_ids=forced_tokens[:, step:step + 1], attention_mask=mask, position_ids=position,
                    use_cache=True, **{name: cache})
        logits.append(out.logits[:, -1].float())
    return torch.stack(logits, dim=1)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.float() - reference.float()).norm() / reference.float().norm()).item()


# Largest gap between two tokens' logits, relative to the largest logit, that counts as a near-tie at the
# model's dtype (`hf-flashmla evaluate`'s tie_rel tolerances).
NEAR_TIE_REL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 1e-2}


def first_divergences(base_tokens: torch.Tensor, base_logits: torch.Tensor, flash_tokens: torch.Tensor,
                      tie_rel: float) -> list[dict]:
    """Per row whose greedy tokens differ: the first differing step and the baseline's own logit gap there between
    its token and flash_mla's (base_logits[:, s] are the baseline's logits for step s), absolute and relative to
    its largest logit; near_tie when that relative gap is at most tie_rel (a rounding-level difference can flip
    the choice, so the two continuations part without either being wrong)."""
    found = []
    for row in range(base_tokens.shape[0]):
        differing = (base_tokens[row] != flash_tokens[row]).nonzero()
        if len(differing) == 0:
            continue
        step = int(differing[0])
        logits = base_logits[row, step].float()
        gap = (logits[base_tokens[row, step]] - logits[flash_tokens[row, step]]).item()
        gap_rel = gap / max(logits.abs().max().item(), 1e-30)
        found.append(dict(row=row, step=step, gap=gap, gap_rel=gap_rel, near_tie=gap_rel <= tie_rel))
    return found


@dataclass
class Comparison:
    match_rate: float            # fraction of generated tokens identical to the baseline's
    identical: bool
    logits_rel_error: float      # teacher-forced: ||flash - baseline|| / ||baseline|| over prefill + every step
    baseline_logits_rel_error_vs_fp32: float | None  # the baseline's own error against its fp32 run (noise floor)
    flash_logits_rel_error_vs_fp32: float | None
    kernel_calls: int            # torch.ops.hf_flashmla.mla_decode calls during the flash_mla run
    paged_calls: dict            # counters.snapshot() of the flash_mla run (transformers_integration/counters.py)
    flash_tokens_per_s: float
    baseline_tokens_per_s: float
    flash_cache_bytes: int       # bytes of the tokens stored (LatentPagedCache.used_bytes)
    baseline_cache_bytes: int    # bytes of the baseline cache's tensors
    flash_tokens: torch.Tensor
    baseline_tokens: torch.Tensor
    divergences: list            # first_divergences of the rows whose tokens differ (empty when identical)


def cache_bytes(cache) -> int:
    """Stored tokens' bytes of a LatentPagedCache; tensor bytes of a DynamicCache's layers."""
    if cache is None:
        return 0
    if hasattr(cache, "used_bytes"):
        return cache.used_bytes()
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


@contextlib.contextmanager
def count_kernel_calls():
    """Counts calls into the compiled op: those through hf_flashmla._ops.mla_decode (what the API calls) and, once
    the block ends, the kernel launches inside decode steps replayed as CUDA graphs (counters' graph_paged_kernel:
    a replay runs no Python)."""
    counter = {"calls": 0}
    original = _ops.mla_decode
    replayed_before = counters["graph_paged_kernel"]

    def counting(*args, **kwargs):
        counter["calls"] += 1
        return original(*args, **kwargs)

    _ops.mla_decode = counting
    try:
        yield counter
    finally:
        _ops.mla_decode = original
        counter["calls"] += counters["graph_paged_kernel"] - replayed_before


def left_padded_prompts(batch: int, length: int, vocab_size: int, pad_token_id: int = 0, seed: int = 0,
                        device="cpu"):
    """Random prompts; row r is left-padded by r * length / (2 * batch) tokens (row 0 unpadded)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        pad = min(row * length // (2 * batch), length - 1)
        mask[row, :pad] = 0
        ids[row, :pad] = pad_token_id
    return ids.to(device), mask.to(device)


def _timed_generate(model, implementation, ids, mask, max_new_tokens, **kwargs):
    model.set_attn_implementation(attn_implementation_for(model.config, implementation))
    if ids.device.type == "cuda":
        torch.cuda.synchronize(ids.device)
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                         do_sample=False, return_dict_in_generate=True, output_scores=True, **kwargs)
    if ids.device.type == "cuda":
        torch.cuda.synchronize(ids.device)
    seconds = time.perf_counter() - start
    return out, seconds


def compare(model, ids, mask, max_new_tokens: int, baseline: str = "eager", warmup: bool = True,
            fp32_reference: bool = True) -> Comparison:
    """Greedy generate() with flash_mla and the baseline (match rate, speed), then teacher-forced logits
    on the baseline's tokens (relative error at every step; with fp32_reference also both against the
    baseline run in float32 on a copy of the model)."""
    if warmup:  # the same shapes as the timed calls: flash_mla captures its decode graphs here, not in the timing
        for implementation in ("flash_mla", baseline):
            _timed_generate(model, implementation, ids, mask, max_new_tokens)
    base, base_seconds = _timed_generate(model, baseline, ids, mask, max_new_tokens)
    counters.reset()
    with count_kernel_calls() as kernel:
        flash, flash_seconds = _timed_generate(model, "flash_mla", ids, mask, max_new_tokens)
    paged = counters.snapshot()
    prompt = ids.shape[1]
    flash_tokens, base_tokens = flash.sequences[:, prompt:], base.sequences[:, prompt:]
    same = flash_tokens == base_tokens
    cache = flash.get(cache_kwarg())

    forced = base_tokens[:, :-1]
    flash_logits = teacher_forced_logits(model, "flash_mla", ids, mask, forced)
    base_logits = teacher_forced_logits(model, baseline, ids, mask, forced)
    flash_vs_fp32 = base_vs_fp32 = None
    if fp32_reference and model.dtype != torch.float32:
        import copy
        reference_model = copy.deepcopy(model).float()
        fp32_logits = teacher_forced_logits(reference_model, baseline, ids, mask, forced)
        del reference_model
        flash_vs_fp32 = relative_error(flash_logits, fp32_logits)
        base_vs_fp32 = relative_error(base_logits, fp32_logits)
    return Comparison(
        match_rate=same.float().mean().item(), identical=bool(same.all()),
        logits_rel_error=relative_error(flash_logits, base_logits),
        baseline_logits_rel_error_vs_fp32=base_vs_fp32, flash_logits_rel_error_vs_fp32=flash_vs_fp32,
        kernel_calls=kernel["calls"], paged_calls=paged,
        flash_tokens_per_s=flash_tokens.numel() / flash_seconds,
        baseline_tokens_per_s=base_tokens.numel() / base_seconds,
        flash_cache_bytes=cache_bytes(cache), baseline_cache_bytes=cache_bytes(base.get(cache_kwarg())),
        flash_tokens=flash_tokens, baseline_tokens=base_tokens,
        divergences=first_divergences(base_tokens, base_logits, flash_tokens, NEAR_TIE_REL.get(model.dtype, 2e-2)))
