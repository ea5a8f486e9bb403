"""FlashMLA itself (DeepSeek's dense sm90 decode kernel) as packaged by SGLang: the registry wheel sgl-flash-mla
1.0.0 (module `flash_mla`, `cp310-abi3`; it declares torch>=2.14.1 but installs with `--no-deps` and loads on the
device's torch 2.11). Used as installed where `import flash_mla` works (tools/device_check.sh installs the carried
wheels into /tmp/site), else unpacked from <repo>/.whl/sgl_flash_mla-*.whl ($FLASHMLA_WHEEL names another) into
$FLASHMLA_PEER_DIR (default <temp>/flashmla_peer) and imported from there.

Call, as FlashMLA's newest API is meant to be used: one `sched_meta, _ = flash_mla.get_mla_metadata()` per config
(and input copy), then
  flash_mla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, sched_meta, None,
                                   softmax_scale=..., causal=True, use_legacy=True)
use_legacy=True selects the dense sm90 kernel (without it the wheel asks for sparse `indices`). The first call
computes the split-KV schedule into sched_meta; make() runs it once, outside the timing, so the timed calls reuse
it, as ours reuse get_mla_metadata's tensors. `schedule_fn` times FlashMLA's scheduler alone
(get_mla_decoding_metadata with use_legacy=True). Variant "flashmla"; the impl "flashmla_step" times a fresh
sched_meta every call (schedule + decode, as a decoding step that does not reuse it).
"""
from __future__ import annotations

import os
import tempfile

import torch

from benchmarks.peers.loading import carried_wheel, import_package, unpack_wheel

NAME = "flashmla"
_PEER_DIR = os.environ.get("FLASHMLA_PEER_DIR", os.path.join(tempfile.gettempdir(), "flashmla_peer"))
NO_WHEEL = ("not run: flash_mla is not installed and there is no sgl_flash_mla wheel in .whl/ "
            "(pip download sgl-flash-mla==1.0.0 --no-deps -d .whl)")

_module = None
_load_error = None


def _load():
    global _module, _load_error
    if _module is not None or _load_error is not None:
        return _module
    try:
        try:
            import flash_mla
        except ImportError:
            wheel = carried_wheel("sgl_flash_mla-*.whl", "FLASHMLA_WHEEL")
            if wheel is None:
                _load_error = NO_WHEEL
                return None
            flash_mla = import_package("flash_mla", unpack_wheel(wheel, _PEER_DIR))
        if not flash_mla.has_legacy():
            _load_error = "this flash_mla build has no legacy (dense sm90) kernels"
            return None
        _module = flash_mla
    except Exception as error:  # reported as the peer's error row
        _load_error = f"loading flash_mla failed: {error!r}"[:300]
    return _module


def available():
    if not torch.cuda.is_available():
        return False, "not run: needs CUDA"
    module = _load()
    if module is None:
        return False, _load_error
    return True, f"flash_mla {getattr(module, '__version__', '?')} from {os.path.dirname(module.__file__)}"


def supports(inputs):
    if inputs["q"].device.type != "cuda":
        return False, "needs CUDA"
    if inputs["q"].shape[-1] != 576 or inputs["dv"] != 512:
        return False, "dense decode takes d = 576, dv = 512"
    return True, ""


def _call(module, inputs, sched_meta):
    return module.flash_mla_with_kvcache(inputs["q"], inputs["k_cache"], inputs["block_table"], inputs["cache_seqlens"],
                                        inputs["dv"], sched_meta, None, softmax_scale=inputs["softmax_scale"],
                                        causal=inputs["causal"], use_legacy=True)


def make(inputs):
    module = _load()
    sched_meta, _ = module.get_mla_metadata()
    _call(module, inputs, sched_meta)  # computes the schedule into sched_meta, outside the timing

    def run():
        return _call(module, inputs, sched_meta)
    return {"flashmla": (run, run)}


def make_step(inputs):
    """Schedule + decode in every call: a fresh sched_meta each time."""
    module = _load()

    def run():
        return _call(module, inputs, module.get_mla_metadata()[0])
    return {"flashmla_step": (run, run)}


def schedule_fn(inputs):
    """FlashMLA's split-KV scheduler alone, on these lengths."""
    module = _load()
    rows = inputs["s_q"] * inputs["h_q"] // inputs["k_cache"].shape[2]

    def run():
        return module.get_mla_decoding_metadata(inputs["cache_seqlens"], rows, inputs["k_cache"].shape[2],
                                                inputs["h_q"], use_legacy=True)
    return run
