"""What `hf-flashmla evaluate` measures for one attention implementation against a reference one.

- teacher_forced_logits: logits at every position of a window, the first `prefill_len` positions from one
  prefill forward into a fresh cache, the rest from decode forwards of `step_tokens` tokens each (the true
  next tokens are fed, so both implementations see identical inputs and the decode path is exercised at
  every position past the prefill);
- LogitErrors: per-token errors against the reference, split into prefill and decode positions;
- negative log-likelihood sums for perplexity;
- greedy continuations and their agreement, where a divergence counts as a near-tie when the reference's
  own logits put the two tokens within `tie_rel` (relative to its largest logit) of each other.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hf_flashmla.cli.runtime import cache_kwarg, new_cache, output_cache

_TINY = 1e-30


@torch.no_grad()
def teacher_forced_logits(model, attn: str, ids: torch.Tensor, prefill_len: int, step_tokens: int,
                          kv_cache_dtype: str = "auto") -> torch.Tensor:
    """float32 [batch, seq_len, vocab]."""
    key = cache_kwarg(model)
    cache = new_cache(model, attn, kv_cache_dtype)
    out = model(input_ids=ids[:, :prefill_len], use_cache=True, **{key: cache})
    cache = output_cache(out) or cache
    chunks = [out.logits.float()]
    position = prefill_len
    while position < ids.shape[1]:
        width = min(step_tokens, ids.shape[1] - position)
        out = model(input_ids=ids[:, position:position + width], use_cache=True, **{key: cache})
        cache = output_cache(out) or cache
        chunks.append(out.logits.float())
        position += width
    return torch.cat(chunks, dim=1)


class LogitErrors:
    """Accumulates per-token logit errors (candidate vs reference) by position group."""

    GROUPS = ("prefill", "decode", "all")

    def __init__(self):
        self.stats = {g: {"tokens": 0, "max_abs": 0.0, "max_rel": 0.0, "sum_rel": 0.0, "top1_same": 0}
                      for g in self.GROUPS}

    def update(self, ref: torch.Tensor, cand: torch.Tensor, prefill_len: int):
        diff = (cand - ref).abs()
        abs_max = diff.amax(-1)                                                  # [b, s]
        rel_inf = abs_max / ref.abs().amax(-1).clamp_min(_TINY)                  # per token, scale-free
        rel_l2 = diff.norm(dim=-1) / ref.norm(dim=-1).clamp_min(_TINY)
        top1 = cand.argmax(-1) == ref.argmax(-1)
        for group, cols in (("prefill", slice(0, prefill_len)), ("decode", slice(prefill_len, None)),
                            ("all", slice(None))):
            n = abs_max[:, cols].numel()
            if n == 0:
                continue
            s = self.stats[group]
            s["tokens"] += n
            s["max_abs"] = max(s["max_abs"], abs_max[:, cols].max().item())
            s["max_rel"] = max(s["max_rel"], rel_inf[:, cols].max().item())
            s["sum_rel"] += rel_l2[:, cols].double().sum().item()
            s["top1_same"] += int(top1[:, cols].sum().item())

    def summary(self) -> dict:
        out = {}
        for group, s in self.stats.items():
            if s["tokens"] == 0:
                continue
            out[group] = {"tokens": s["tokens"], "max_abs": s["max_abs"], "max_rel": s["max_rel"],
                          "mean_rel": s["sum_rel"] / s["tokens"], "top1_agreement": s["top1_same"] / s["tokens"]}
        return out


class Perplexity:
    def __init__(self):
        self.nll, self.tokens = 0.0, 0

    def update(self, logits: torch.Tensor, ids: torch.Tensor):
        vocab = logits.shape[-1]
        self.nll += F.cross_entropy(logits[:, :-1].reshape(-1, vocab).double(), ids[:, 1:].reshape(-1),
                                    reduction="sum").item()
        self.tokens += ids[:, 1:].numel()

    @property
    def value(self) -> float | None:
        return math.exp(self.nll / self.tokens) if self.tokens else None


@torch.no_grad()
def greedy(model, prompts: torch.Tensor, new_tokens: int, cache_config: dict | None = None):
    """(tokens [p, n], unprocessed logits float32 [p, n, vocab]) of a greedy generate()."""
    extra = {"cache_config": cache_config} if cache_config else {}
    out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, num_beams=1, return_dict_in_generate=True,
                         output_logits=True, **extra)
    return out.sequences[:, prompts.shape[1]:], torch.stack(out.logits, dim=1).float()


def greedy_agreement(ref_tokens, ref_logits, cand_tokens, tie_rel: float) -> dict:
    n = min(ref_tokens.shape[1], cand_tokens.shape[1])
    same = ref_tokens[:, :n] == cand_tokens[:, :n]
    divergences, prefix = [], []
    for p in range(same.shape[0]):
        wrong = (~same[p]).nonzero()
        if len(wrong) == 0:
            prefix.append(1.0)
            continue
        step = int(wrong[0])
        prefix.append(step / n)
        row = ref_logits[p, step]
        gap = (row[ref_tokens[p, step]] - row[cand_tokens[p, step]]).item()
        gap_rel = gap / max(row.abs().max().item(), _TINY)
        divergences.append({"prompt": p, "step": step, "reference_token": int(ref_tokens[p, step]),
                            "candidate_token": int(cand_tokens[p, step]), "gap": gap, "gap_rel": gap_rel,
                            "near_tie": gap_rel <= tie_rel})
    return {"tokens": int(same.numel()), "match_rate": same.float().mean().item(),
            "prefix_match": sum(prefix) / len(prefix), "divergences": divergences,
            "unexplained_divergences": sum(not d["near_tie"] for d in divergences)}
