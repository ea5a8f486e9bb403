"""The kernel benchmark's workloads and inputs (docs/benchmarks.md, "Kernel").

Shapes: h_kv = 1, d = 576 (512 latent + 64 rope), dv = 512, page size 64, causal. Block tables are a random
permutation of the pool (the pages of one sequence are not contiguous in memory).

  FLOPs = 2 * s_q * h_q * sum(len) * (576 + 512)                       (no discount for the causal triangle)
  bytes = 2 * (sum(len) * 576 + b * s_q * h_q * 576 + b * s_q * h_q * 512)

Groups (--configs):
  main   b in {64, 128} x L in {4K, 8K, 16K} x s_q in {1, 2} x h_q in {16, 32, 64, 128} x lengths in {equal,
         normal around L with std L/4 ("varlen4"), with std L/2 ("varlen2")}: 144 configs
  extra  workloads where FlashMLA has been beaten in published figures (uneven b4 s_q4, b128 x 1K, 16 x s_q16 x 1K,
         b16 x 64K), s_q 3..4 at h_q 16, and FlashMLA's own sweep (b128 s_q1 h_q128, lengths base + 2i)
  small  b in {1, 2, 4, 8} x L in {32K, 64K, 128K}, s_q 1, h_q 128: DeepSeek-V3's decode shape at small batch
  h20    h_q = 20 (GLM-4.7-Flash's head count): b in {1, 8} x 32K and b in {64, 128} x {4K, 16K}, s_q in {1, 2}
  dry    two tiny configs for a CPU plumbing run
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

D_QK, D_V, PAGE, H_KV = 576, 512, 64, 1
L2_BYTES = 50 * 1024 * 1024
# BENCHMARKS.md's classes by query rows per KV head (h_q * s_q): memory-bound up to 32, compute-bound from 128.
MEMORY_BOUND_MAX_ROWS, COMPUTE_BOUND_MIN_ROWS = 32, 128
GROUPS = ("main", "extra", "small", "h20")
SPREADS = {"equal": None, "varlen4": 4.0, "varlen2": 2.0}  # lengths' std = L / divisor


@dataclass
class Config:
    name: str
    group: str
    b: int
    lengths: list
    s_q: int
    h_q: int
    mean_len: int
    spread: str = "equal"  # equal | varlen4 | varlen2 | given (lengths listed by the workload)
    published_key: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def varlen(self) -> bool:
        return self.spread != "equal"

    @property
    def sum_len(self):
        return sum(self.lengths)

    @property
    def flops(self):
        return 2 * self.s_q * self.h_q * self.sum_len * (D_QK + D_V)

    @property
    def bytes(self):
        rows = self.b * self.s_q * self.h_q
        return 2 * (self.sum_len * H_KV * D_QK + rows * D_QK + rows * D_V)

    @property
    def rows(self):
        return self.s_q * self.h_q

    @property
    def bound(self) -> str:
        if self.rows <= MEMORY_BOUND_MAX_ROWS:
            return "memory"
        return "compute" if self.rows >= COMPUTE_BOUND_MIN_ROWS else "middle"


def bound_of(rows: int) -> str:
    return "memory" if rows <= MEMORY_BOUND_MAX_ROWS else ("compute" if rows >= COMPUTE_BOUND_MIN_ROWS else "middle")


def varlen_lengths(b, mean, std_divisor, seed):
    gen = torch.Generator().manual_seed(seed)
    draws = torch.normal(float(mean), mean / std_divisor, size=(b,), generator=gen)
    return [max(1, int(round(x))) for x in draws.tolist()]


def main_configs(quick=False, seed=0):
    batches, means, heads, sqs, spreads = (64, 128), (4096, 8192, 16384), (16, 32, 64, 128), (1, 2), tuple(SPREADS)
    if quick:
        means, heads, spreads = (4096, 16384), (16, 128), ("equal", "varlen2")
    configs = []
    for b, mean, s_q, h_q, spread in itertools.product(batches, means, sqs, heads, spreads):
        divisor = SPREADS[spread]
        lengths = varlen_lengths(b, mean, divisor, seed + b * 7 + mean + int(divisor)) if divisor else [mean] * b
        configs.append(Config(f"b{b}_L{mean}_sq{s_q}_h{h_q}_{spread}", "main", b, lengths, s_q, h_q, mean, spread))
    return configs


def extra_configs(quick=False):
    configs = [
        Config("uneven_b4_sq4_h16", "extra", 4, [4641, 45118, 1730, 1696], 4, 16, 13296, "given",
               "uneven_b4_sq4_h16"),
        Config("b128_1K_sq1_h16", "extra", 128, [1024] * 128, 1, 16, 1024, published_key="b128_1K_sq1_h16"),
        Config("b16_sq16_1K_h16", "extra", 16, [1024] * 16, 16, 16, 1024, published_key="b16_sq16_1K_h16"),
    ]
    if quick:
        return configs
    configs.append(Config("b16_64K_sq1_h16", "extra", 16, [65536] * 16, 1, 16, 65536, published_key="b16_64K_sq1_h16"))
    for b, mean, s_q in itertools.product((64, 128), (4096, 16384), (3, 4)):
        configs.append(Config(f"b{b}_L{mean}_sq{s_q}_h16", "extra", b, [mean] * b, s_q, 16, mean))
    for base in (1024, 2048, 4096, 8192, 16384, 32768):  # FlashMLA's own sweep: lengths base + 2i
        lengths = [base + 2 * i for i in range(128)]
        configs.append(Config(f"sweep_b128_sq1_h128_base{base}", "extra", 128, lengths, 1, 128,
                              sum(lengths) // 128, "given", extra={"sweep_base": base}))
    return configs


def small_batch_configs(quick=False):
    batches, means = ((1, 8), (32768, 131072)) if quick else ((1, 2, 4, 8), (32768, 65536, 131072))
    return [Config(f"b{b}_L{mean}_sq1_h128", "small", b, [mean] * b, 1, 128, mean)
            for b, mean in itertools.product(batches, means)]


def h20_configs(quick=False):
    shapes = ((1, 32768), (8, 32768), (64, 4096), (64, 16384), (128, 4096), (128, 16384))
    if quick:
        shapes = ((1, 32768), (64, 4096))
    return [Config(f"b{b}_L{mean}_sq{s_q}_h20", "h20", b, [mean] * b, s_q, 20, mean)
            for (b, mean), s_q in itertools.product(shapes, (1, 2))]


def dry_configs():
    return [
        Config("dry_b2_sq1_h16", "dry", 2, [100, 37], 1, 16, 68, "given"),
        Config("dry_b3_sq2_h16", "dry", 3, [130, 64, 1], 2, 16, 65, "given"),
    ]


def configs_for(groups, quick=False, seed=0):
    makers = {"main": lambda: main_configs(quick, seed), "extra": lambda: extra_configs(quick),
              "small": lambda: small_batch_configs(quick), "h20": lambda: h20_configs(quick)}
    return [cfg for group in groups for cfg in makers[group]()]


# ------------------------------------------------------------------------------------------------ inputs
def build_inputs(cfg, device, dtype, seed, copies=1):
    """`copies` input dicts (same lengths and block table, independent random data)."""
    gen = torch.Generator().manual_seed(seed)
    blocks = [-(-n // PAGE) for n in cfg.lengths]
    total_blocks = max(1, sum(blocks))
    max_blocks = max(1, max(blocks))
    perm = torch.randperm(total_blocks, generator=gen).to(torch.int32)
    block_table = torch.zeros(cfg.b, max_blocks, dtype=torch.int32)
    offset = 0
    for i, n in enumerate(blocks):
        block_table[i, :n] = perm[offset:offset + n]
        offset += n
    block_table = block_table.to(device)
    cache_seqlens = torch.tensor(cfg.lengths, dtype=torch.int32, device=device)
    out = []
    for c in range(copies):
        torch.manual_seed(seed * 1000 + c)
        k_cache = torch.randn(total_blocks, PAGE, H_KV, D_QK, device=device, dtype=dtype)
        q = torch.randn(cfg.b, cfg.s_q, cfg.h_q, D_QK, device=device, dtype=dtype)
        out.append(dict(q=q, k_cache=k_cache, block_table=block_table, cache_seqlens=cache_seqlens,
                        lengths=list(cfg.lengths), s_q=cfg.s_q, h_q=cfg.h_q, dv=D_V, page_size=PAGE,
                        softmax_scale=D_QK ** -0.5, causal=True))
    return out


def copies_for(cfg, dtype):
    """Enough independent input copies that rotating among them defeats the 50 MB L2."""
    per_copy = cfg.bytes * (2 if dtype == torch.float32 else 1)
    if per_copy >= L2_BYTES:
        return 1
    return min(16, math.ceil(4 * L2_BYTES / max(per_copy, 1)))


def check_subset(cfg, limit):
    """The sequences checked against the reference: the first limit - 1 and the longest."""
    if cfg.b <= limit:
        return list(range(cfg.b))
    longest = max(range(cfg.b), key=lambda i: cfg.lengths[i])
    idx = list(range(limit - 1))
    idx.append(longest if longest not in idx else limit - 1)
    return idx


def float32_subset(inputs, idx):
    """The checked sequences' inputs in float32, with their pages gathered into a compact pool (so the reference
    never copies the whole cache to float32)."""
    index = torch.tensor(idx, device=inputs["q"].device)
    table = inputs["block_table"].index_select(0, index).long()
    lengths = inputs["cache_seqlens"].index_select(0, index)
    pages = [-(-int(n) // PAGE) for n in lengths.tolist()]
    used = torch.cat([table[i, :n] for i, n in enumerate(pages)]) if sum(pages) else table.new_zeros(0)
    compact = torch.zeros_like(table)
    offset = 0
    for i, n in enumerate(pages):
        compact[i, :n] = torch.arange(offset, offset + n, device=table.device)
        offset += n
    k_cache = inputs["k_cache"].index_select(0, used).float() if sum(pages) else inputs["k_cache"][:1].float()
    return inputs["q"].index_select(0, index).float(), k_cache, compact.to(torch.int32), lengths
