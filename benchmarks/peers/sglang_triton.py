"""SGLang's Triton MLA decode kernel (sglang/srt/layers/attention/triton_ops/decode_attention.py).

The sglang package is not installed (its dependencies are huge): the one module is read out of the sglang
wheel staged in <repo>/.whl (or $SGLANG_WHEEL), written to a temp dir (Triton needs the source file) and
imported under a private name, with a stub `sglang.srt.utils` that provides `is_hip() -> False` (its only
import besides triton). Its kernel takes token-level kv_indices (page * 64 + offset) and kv_indptr, with
separate K / V buffers: K = the cache viewed as [tokens, 1, 576], V = its first 512 channels.
s_q = 1 only. Variants: num_kv_splits in {4, 8, 16, 32}; the bench reports the best.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import types
import zipfile

import torch

from benchmarks.peers.loading import carried_wheel

NAME = "sglang"
MODULE_PATH = "sglang/srt/layers/attention/triton_ops/decode_attention.py"
SPLITS = (4, 8, 16, 32)

_module = None
_load_error = None


def _load():
    global _module, _load_error
    if _module is not None or _load_error is not None:
        return _module
    try:
        import triton  # noqa: F401
    except ImportError as error:
        _load_error = f"triton not importable: {error}"
        return None
    wheel = carried_wheel("sglang-*.whl", "SGLANG_WHEEL")
    if wheel is None:
        _load_error = "not run: no sglang wheel in .whl/ (benchmarks/README.md)"
        return None
    try:
        with zipfile.ZipFile(wheel) as archive:
            source = archive.read(MODULE_PATH)
        folder = tempfile.mkdtemp(prefix="sglang_decode_")
        path = os.path.join(folder, "sglang_decode_attention.py")
        with open(path, "wb") as handle:
            handle.write(source)
        # Stubs for the module's one sglang import; put in place only while it is imported.
        added = []
        for name in ("sglang", "sglang.srt", "sglang.srt.utils"):
            if name not in sys.modules:
                stub = types.ModuleType(name)
                stub.__path__ = []
                sys.modules[name] = stub
                added.append(name)
        sys.modules["sglang.srt.utils"].is_hip = getattr(sys.modules["sglang.srt.utils"], "is_hip",
                                                         lambda: False)
        try:
            spec = importlib.util.spec_from_file_location("_peer_sglang_decode_attention", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        finally:
            for name in added:
                sys.modules.pop(name, None)
        _module = module
        _module.WHEEL = os.path.basename(wheel)
    except Exception as error:  # reported as the peer's error row
        _load_error = f"loading {MODULE_PATH} from {os.path.basename(wheel)} failed: {error!r}"
    return _module


def available():
    if not torch.cuda.is_available():
        return False, "not run: needs CUDA"
    module = _load()
    if module is None:
        return False, _load_error
    return True, module.WHEEL


def supports(inputs):
    if inputs["s_q"] != 1:
        return False, "s_q > 1 not supported"
    if inputs["q"].device.type != "cuda":
        return False, "needs CUDA"
    return True, ""


def make(inputs):
    module = _load()
    q, k_cache = inputs["q"], inputs["k_cache"]
    batch, _, h_q, d = q.shape
    dv = inputs["dv"]
    page = k_cache.shape[1]
    device = q.device
    lengths = inputs["cache_seqlens"].to(torch.int64)
    # Token-level indices, built once per step by the serving framework (outside the timed call).
    kv_indptr = torch.zeros(batch + 1, dtype=torch.int32, device=device)
    kv_indptr[1:] = torch.cumsum(lengths, 0).to(torch.int32)
    pieces = []
    for i, length in enumerate(inputs["lengths"]):
        positions = torch.arange(length, device=device)
        pieces.append(inputs["block_table"][i, positions // page].to(torch.int64) * page + positions % page)
    # The kernel multiplies a loaded token index by the token stride (576) in the index's own type:
    # int32 indices overflow past 2**31 / 576 = 3.7M tokens (the 32K sweep has 4.2M) and fault, so
    # use int64 there and int32, as serving frameworks do, below that.
    index_dtype = torch.int64 if k_cache.shape[0] * page * d >= 2 ** 31 else torch.int32
    kv_indices = torch.cat(pieces).to(index_dtype) if pieces else torch.zeros(0, dtype=index_dtype, device=device)
    k_buffer = k_cache.view(-1, 1, d)
    v_buffer = k_buffer[..., :dv]
    q3 = q.view(batch, h_q, d)
    out = torch.empty(batch, h_q, dv, dtype=q.dtype, device=device)
    scale = inputs["softmax_scale"]

    variants = {}
    for splits in SPLITS:
        attn_logits = torch.empty(batch, h_q, splits, dv, dtype=torch.float32, device=device)
        attn_lse = torch.empty(batch, h_q, splits, dtype=torch.float32, device=device)
        num_kv_splits = torch.full((batch,), splits, dtype=torch.int32, device=device)

        def run(splits=splits, attn_logits=attn_logits, attn_lse=attn_lse, num_kv_splits=num_kv_splits):
            module.decode_attention_fwd(q3, k_buffer, v_buffer, out, kv_indptr, kv_indices, attn_logits,
                                        attn_lse, num_kv_splits, splits, scale, 1.0, 1.0)
            return out

        def result(run=run, splits=splits, attn_lse=attn_lse):
            o = run()
            return o.view(batch, 1, h_q, dv), _combined_lse(attn_lse, lengths, splits)

        variants[f"sglang/{splits}"] = (run, result)
    return variants


def _combined_lse(attn_lse, lengths, splits, min_block_kv=32):
    """The kernel writes per-split lse only; combine the valid splits (same split rule as its stage 2)."""
    per_split = (-(-(-(-lengths // splits)) // min_block_kv)) * min_block_kv  # cdiv(cdiv(L, S), 32) * 32
    starts = per_split.view(-1, 1) * torch.arange(splits, device=lengths.device).view(1, -1)
    valid = starts < lengths.view(-1, 1)  # [b, S]
    masked = attn_lse.masked_fill(~valid.unsqueeze(1), float("-inf"))
    lse = torch.logsumexp(masked, dim=-1)  # [b, h_q]
    return lse.unsqueeze(-1)
