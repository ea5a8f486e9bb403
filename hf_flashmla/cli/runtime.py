"""What the commands and the end-to-end benchmark need from torch and Transformers, written once for every
supported transformers release.

- which attention implementations can run here (flash_mla needs `import hf_flashmla` to register it);
- the cache object from a generate() or forward() output, and its size in bytes;
- the cache keyword of forward() (`past_key_values` up to 5.23, `cache` from 5.24);
- out-of-memory detection and clean-up, device / dtype parsing.
"""
from __future__ import annotations

import gc
import inspect

import torch

STOCK_ATTN = ("eager", "sdpa")
# Names an integration cache may use to report its own size; tried before walking its tensors.
_CACHE_SIZE_METHODS = ("kv_cache_bytes", "nbytes", "memory_bytes", "num_bytes", "get_memory_bytes")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:  # torch's message lists the device types it knows
        raise ValueError(f"--device: {name!r} is not a device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {name!r} requested but torch.cuda.is_available() is False")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
              "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"--dtype: expected auto or one of {sorted(dtypes)}, got {name!r}")
    return dtypes[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def attn_unavailable_reason(name: str) -> str | None:
    """None when `name` is a registered attention implementation (importing hf_flashmla for flash_mla)."""
    if name in STOCK_ATTN:
        return None
    if name == "flash_mla":
        try:
            import hf_flashmla  # noqa: F401  (registers the attention, its mask and its cache)
        except Exception as error:  # any import failure makes the rows "unavailable", with the reason
            return f"import hf_flashmla failed: {type(error).__name__}: {error}"
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name not in ALL_ATTENTION_FUNCTIONS:
        hint = " (this hf_flashmla has no Transformers integration)" if name == "flash_mla" else ""
        return f"attn_implementation {name!r} is not registered{hint}"
    return None


def use_attn(model, name: str) -> str | None:
    """Switches `model` to attention `name`; returns the reason when that is impossible."""
    reason = attn_unavailable_reason(name)
    if reason:
        return reason
    try:
        model.set_attn_implementation(name)
    except Exception as error:  # the integration's own refusal (e.g. an unsupported model) is a result
        return f"set_attn_implementation({name!r}) failed: {type(error).__name__}: {error}"
    actual = getattr(model.config, "_attn_implementation", name)
    if actual != name:
        return f"set_attn_implementation({name!r}) left the model on {actual!r}"
    return None


def flash_mla_backend(device: torch.device) -> str:
    try:
        import hf_flashmla

        choice = hf_flashmla.backend(device)
        return f"{choice.name} ({choice.reason})"
    except Exception as error:
        return f"unknown ({type(error).__name__}: {error})"


def flash_mla_call_counts() -> dict | None:
    """A copy of the integration's per-path call counters (paged_kernel, paged_reference, dense, ...), or None
    where this hf_flashmla keeps none. Differences of two copies say which paths a run took."""
    try:
        from hf_flashmla.transformers_integration.counters import counters
    except ImportError:
        return None
    return counters.snapshot()


def count_delta(before: dict | None, after: dict | None) -> dict | None:
    if before is None or after is None:
        return None
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def output_cache(output):
    """The cache a generate() / forward() output carries (`cache` from 5.24, `past_key_values` before)."""
    for name in ("cache", "past_key_values"):
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None


def cache_kwarg(model) -> str:
    """The keyword forward() takes the cache under in this transformers version."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def new_cache(model, attn: str, kv_cache_dtype: str = "auto"):
    """An empty cache of the kind generate() would create for `attn`: hf_flashmla's paged latent cache for
    flash_mla (of kv_cache_dtype), Transformers' DynamicCache otherwise."""
    if attn == "flash_mla":
        from hf_flashmla.hybrid_cache import latent_cache_for

        return latent_cache_for(model.config, kv_cache_dtype=kv_cache_dtype)
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def cache_seq_length(cache) -> int | None:
    try:
        return int(cache.get_seq_length())
    except Exception:
        return None


def kv_cache_bytes(cache) -> tuple[int | None, str]:
    """(bytes the cache holds, how they were counted).

    A size method of the cache itself wins; otherwise the distinct tensor storages reachable from the
    cache object are summed (a paged pool counts whole, allocated pages included, which is what occupies
    the GPU)."""
    if cache is None:
        return None, "no cache returned"
    for name in _CACHE_SIZE_METHODS:
        attr = getattr(cache, name, None)
        if attr is None:
            continue
        try:
            value = attr() if callable(attr) else attr
            return int(value), f"{type(cache).__name__}.{name}"
        except Exception:
            continue
    storages = {}
    _collect_storages(cache, storages, seen=set(), depth=0)
    return sum(storages.values()), f"tensors reachable from {type(cache).__name__}"


def kv_cache_used_bytes(cache) -> int | None:
    """Bytes of the stored tokens alone, where the cache can tell (a paged pool holds free pages too)."""
    method = getattr(cache, "used_bytes", None)
    if method is None:
        return None
    try:
        return int(method() if callable(method) else method)
    except Exception:
        return None


def _collect_storages(obj, storages, seen, depth):
    if depth > 6 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if obj.device.type != "meta":
            storage = obj.untyped_storage()
            storages[(obj.device, storage.data_ptr())] = storage.nbytes()
        return
    if isinstance(obj, (list, tuple, set)):
        items = obj
    elif isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, torch.nn.Module):
        return  # a reference back to the model would count its weights
    elif hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] in ("transformers", "hf_flashmla"):
        items = vars(obj).values()
    else:
        return
    for item in items:
        _collect_storages(item, storages, seen, depth + 1)


def is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    # Some paths (cuBLAS workspace, a custom op) surface OOM as a RuntimeError.
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_memory(device: torch.device):
    if device.type == "cuda":  # on the CPU nothing is measured, and a full collection per run is slow
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def reset_peak(device: torch.device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def total_memory(device: torch.device) -> int | None:
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"
