"""What `register()` hooks into Transformers so that attn_implementation="flash_mla" serves the multi-head latent
attention (MLA) models of Transformers 5.17 to 5.25.

The supported range is declared once, in hf_flashmla/transformers_range.py (setup.py's requirement, the
check below, .ci/run's two ends). Below it nothing is registered (with a warning); a release newer than the
newest tested one is registered with a warning.

`register()` (run by `import hf_flashmla` when transformers is installed) does, once:
- registers "flash_mla" in AttentionInterface (so the name is accepted by from_pretrained and
  set_attn_implementation) and its mask function in AttentionMaskInterface (the 2D padding mask is
  passed through to the attention, which needs nothing else);
- finds the MLA attention classes of the installed release by structure (families.py) and makes each served
  one run the absorbed, paged forward (attention.py, through the structural adapter mla_adapter.py) when
  its config says "flash_mla". The stock forward expands the whole latent history through kv_b_proj at
  every step before any attention function is called, so a registered attention function alone cannot
  avoid that cost; the class' forward dispatches on the config instead, so eager/sdpa models are untouched.
  (register_patch_mapping would swap classes only inside from_pretrained and for every attention
  implementation.) Every served class gets the same dispatching wrapper: a family needs no patch of its own.
- makes generate() of a model whose (text) config says "flash_mla" create a LatentPagedCache (a
  HybridLatentCache for MLA layers between linear-attention layers) instead of a DynamicCache, and refuses
  what cannot be served (continuous batching, static caches); generate(..., cache_config={"kv_cache_dtype":
  "fp8_e4m3"}) (or the model's generation_config.cache_config) makes that cache FP8;
- decodes with CUDA graphs (decode_graphs) and prefills under a memory budget (prefill_blocks: the served
  families' causal-LM forward) where the cache is a LatentPagedCache of the MLA layers alone;
- refuses "flash_mla" at load / set_attn_implementation time for any other model, naming why: not MLA,
  sparse (DSA) MLA, whose top-k sparse decode kernel hf_flashmla does not have, or MLA maths the adapter
  does not know;
- runs each served family's decoder stack (its base model's forward) inside its LatentPagedCache's
  forward_pass(): a step is kept only when the stack returns (an exception rolls it back), and a cache
  built for more layers than the stack runs is refused rather than rolled back at every step;
- keeps Transformers from trying to import a flash-attn package for a name that contains "flash".

Under tp_plan each model follows the installed release's plan: DeepSeek-V2's shards the attention heads
(q_proj/q_b_proj and kv_b_proj colwise, o_proj rowwise) in every supported release, DeepSeek-V3's only from
5.25 on (before, attention and its cache are replicated). Every rank keeps the whole latent cache and runs
the heads its kv_b_proj shard holds.
"""
from __future__ import annotations

import functools
import inspect

import torch

from hf_flashmla.transformers_integration import decode_graphs, prefill_blocks  # submodules
from hf_flashmla.transformers_integration.attention import ATTN_IMPLEMENTATION, flash_mla_forward
from hf_flashmla.transformers_integration.compat import cache_kwarg
from hf_flashmla.transformers_integration.counters import counters
from hf_flashmla.transformers_integration.families import CONFIG_ONLY_FAMILIES, discover, has_config
from hf_flashmla.transformers_integration.mla_adapter import SPARSE_MARKER, UnservedAttention

SPARSE_MISSING = ("hf_flashmla has no sparse top-k decode kernel (attention over each query's top-k keys), only dense "
                  "MLA decoding, and running it dense would silently change its outputs")
_registered = False
_families: dict = {}

# The integration's per-path call counts (counters.py), under the names the tests and scripts use.
call_counts = counters
reset_call_counts = counters.reset


def flash_mla_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                   attention_mask=None, **kwargs):
    """AttentionMaskInterface entry: the 2D padding mask as given, or None. The attention takes causality from the
    cache lengths and padding from this mask (no 4D mask is built), and checks its width against its cache: cut
    here to kv_length columns, a wrong width would pass unseen (eager reads a wider mask's first columns)."""
    return attention_mask


def _unsupported_attention(module, query, key, value, attention_mask, **kwargs):
    """The registered attention function: reached only by an attention class flash_mla does not serve (its
    config was given "flash_mla" by hand)."""
    name = type(module).__name__
    if kwargs.get("indices") is not None or getattr(module, SPARSE_MARKER, None) is not None:
        raise NotImplementedError(f"attn_implementation='flash_mla': {name} is sparse (DSA) multi-head latent "
                                  f"attention; {SPARSE_MISSING}. Use 'eager' or 'sdpa'.")
    raise ValueError(
        f"attn_implementation='flash_mla' serves only multi-head latent attention (the families in "
        f"hf_flashmla.transformers_integration.families); {name} is not one. Use 'sdpa' or 'eager'.")


def _dispatching_forward(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        if self.config._attn_implementation != ATTN_IMPLEMENTATION:
            return original(self, *args, **kwargs)
        if len(args) > 1:  # positional call: V2 and V3 order their parameters differently
            bound = signature.bind(self, *args, **kwargs)
            arguments = dict(bound.arguments)
            arguments.pop("self")
            extra = arguments.pop("kwargs", {})
            return flash_mla_forward(self, **arguments, **extra)
        return flash_mla_forward(self, *args, **kwargs)

    forward._hf_flashmla_original = original
    return forward


def uses_flash_mla(model) -> bool:
    """Whether the model (or, for a composite model such as kimi_k25, its text model) runs flash_mla."""
    config = model.config
    text_config = config.get_text_config(decoder=True)
    return ATTN_IMPLEMENTATION in (config._attn_implementation, text_config._attn_implementation)


def attn_implementation_for(config, implementation: str):
    """The attn_implementation argument that gives a model's MLA attention `implementation`: the name itself,
    or for a composite model whose text model is the MLA model (kimi_k25) a dict giving it to the text
    sub-config and 'eager' to the others (text-only generation never runs them)."""
    text_config = config.get_text_config(decoder=True)
    if text_config is config or implementation != ATTN_IMPLEMENTATION:
        return implementation
    keys = [key for key in getattr(config, "sub_configs", {}) if getattr(config, key, None) is not None]
    return {key: implementation if getattr(config, key) is text_config else "eager" for key in keys}


def _batch_size(signature, args, kwargs):
    """generate()'s batch_size argument to _prepare_cache_for_generation (rows after beam expansion)."""
    try:
        return signature.bind_partial(None, None, None, *args, **kwargs).arguments.get("batch_size")
    except TypeError:
        return None


def _cache_preparing(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if not uses_flash_mla(self):
            return original(self, generation_config, model_kwargs, *args, **kwargs)
        implementation = getattr(generation_config, "cache_implementation", None)
        if implementation not in (None, "dynamic"):
            raise ValueError(f"cache_implementation: attn_implementation='flash_mla' keeps its own paged latent cache "
                             f"(hf_flashmla.LatentPagedCache); got cache_implementation={implementation!r}. Leave it "
                             f"unset, or pass cache=hf_flashmla.LatentPagedCache(model.config, max_pages=...)")
        kv_cache_dtype = generation_kv_cache_dtype(generation_config)
        result = original(self, generation_config, model_kwargs, *args, **kwargs)
        from transformers.cache_utils import DynamicCache

        from hf_flashmla.latent_cache import LatentPagedCache
        for name in ("cache", "past_key_values"):
            cache = model_kwargs.get(name)
            if type(cache) is DynamicCache and not getattr(cache, "_is_user_defined", False):
                model_kwargs[name] = _generation_cache(self, generation_config, model_kwargs,
                                                       _batch_size(signature, args, kwargs), kv_cache_dtype)
            elif isinstance(cache, LatentPagedCache) and generation_config.cache_config and \
                    cache.kv_cache_dtype != kv_cache_dtype:
                raise ValueError(f"cache_config: asks for kv_cache_dtype={kv_cache_dtype!r}, but the cache passed to "
                                 f"generate() is a LatentPagedCache with kv_cache_dtype={cache.kv_cache_dtype!r}")
        return result

    _prepare_cache_for_generation._hf_flashmla_original = original
    return _prepare_cache_for_generation


CACHE_CONFIG_KEYS = ("kv_cache_dtype",)


def generation_kv_cache_dtype(generation_config) -> str:
    """The kv_cache_dtype that generation_config.cache_config asks for ("auto" when it says nothing); an unknown key
    or value raises ValueError naming cache_config."""
    from hf_flashmla import fp8_latent

    cache_config = getattr(generation_config, "cache_config", None) or {}
    if not isinstance(cache_config, dict):
        raise ValueError(f"cache_config: expected a dict such as {{'kv_cache_dtype': 'fp8_e4m3'}}, got "
                         f"{type(cache_config).__name__}")
    unknown = sorted(set(cache_config) - set(CACHE_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"cache_config: attn_implementation='flash_mla' builds a hf_flashmla.LatentPagedCache, which "
                         f"takes {list(CACHE_CONFIG_KEYS)} from cache_config; got {unknown}")
    return fp8_latent.kv_cache_dtype_or_default(cache_config.get("kv_cache_dtype"), "cache_config['kv_cache_dtype']")


def _generation_cache(model, generation_config, model_kwargs, batch, kv_cache_dtype="auto"):
    """The LatentPagedCache generate() decodes with: reserving max_length tokens per sequence, in the model's
    graph arena, where decode steps can be CUDA graphs (decode_graphs); else a cache that grows as it goes.
    A model with linear-attention layers gets a HybridLatentCache, which grows as it goes (their states are
    not in the arena's pools, and prefill row blocks would split their batch)."""
    from hf_flashmla.hybrid_cache import HybridLatentCache, has_state_layers
    from hf_flashmla.latent_cache import LatentPagedCache

    if has_state_layers(model.config):
        return HybridLatentCache(model.config, kv_cache_dtype=kv_cache_dtype)
    if generation_config.disable_compile or not decode_graphs.graphs_possible(model):
        return LatentPagedCache(model.config, kv_cache_dtype=kv_cache_dtype)
    for value in (model_kwargs.get("inputs_embeds"), model_kwargs.get("attention_mask")):
        if batch is None and isinstance(value, torch.Tensor):
            batch = value.shape[0]
    reserve = generation_config.max_length
    if batch is None or reserve is None or \
            decode_graphs.reserve_tokens_for(model, batch, reserve, kv_cache_dtype) is None:
        return LatentPagedCache(model.config, kv_cache_dtype=kv_cache_dtype)
    arena = decode_graphs.arena_for(model, decode_graphs.model_device(model))
    cache = LatentPagedCache(model.config, reserve_tokens=reserve, graph_arena=arena, kv_cache_dtype=kv_cache_dtype)
    arena.claim(cache)
    return cache


def _graph_criteria(original):
    """generate() asks this before decoding: True makes it take get_compiled_call()'s forward, which for
    flash_mla replays CUDA graphs. generate(..., disable_compile=True) keeps every step eager."""
    @functools.wraps(original)
    def _valid_auto_compile_criteria(self, model_kwargs, generation_config, *args, **kwargs):
        if not uses_flash_mla(self):
            return original(self, model_kwargs, generation_config, *args, **kwargs)
        from hf_flashmla.latent_cache import LatentPagedCache
        cache = model_kwargs.get(cache_kwarg())
        return (not generation_config.disable_compile and isinstance(cache, LatentPagedCache)
                and cache._arena is not None)

    _valid_auto_compile_criteria._hf_flashmla_original = original
    return _valid_auto_compile_criteria


def _graph_runner(original):
    @functools.wraps(original)
    def get_compiled_call(self, *args, **kwargs):
        if not uses_flash_mla(self):
            return original(self, *args, **kwargs)
        runner = self.__dict__.get("_hf_flashmla_decode_runner")
        if runner is None:
            runner = decode_graphs.DecodeGraphRunner(self)
            object.__setattr__(self, "_hf_flashmla_decode_runner", runner)
        return runner

    get_compiled_call._hf_flashmla_original = original
    return get_compiled_call


def _budgeted_forward(original):
    """The causal LM's forward: a flash_mla prompt of more tokens than the prefill budget runs in blocks
    (prefill_blocks); it takes prefill_tokens= (also through generate()) to set the budget."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def forward(self, *args, prefill_tokens=None, **kwargs):
        if self.config._attn_implementation == ATTN_IMPLEMENTATION:
            call = prefill_blocks.blocked_call(self, signature, cache_kwarg(), args, kwargs, prefill_tokens)
            if call is not None:
                return prefill_blocks.run_blocked(self, original, call)
        return original(self, *args, **kwargs)

    forward.__signature__ = prefill_blocks.with_prefill_argument(signature)
    forward._hf_flashmla_original = original
    return forward


def _closing_forward(original):
    """The decoder stack's forward, run inside its LatentPagedCache's forward_pass(): a step is kept only when
    the stack returns, and a cache built for more layers than the stack ran is refused."""
    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        if self.config._attn_implementation != ATTN_IMPLEMENTATION:
            return original(self, *args, **kwargs)
        from hf_flashmla.latent_cache import LatentPagedCache
        # The cache's parameter name and position vary between releases.
        cache = next((value for value in (*args, *kwargs.values()) if isinstance(value, LatentPagedCache)), None)
        if cache is None:
            return original(self, *args, **kwargs)
        with cache.forward_pass():
            return original(self, *args, **kwargs)

    forward._hf_flashmla_original = original
    return forward


def _refusing(original, what):
    @functools.wraps(original)
    def method(self, *args, **kwargs):
        if uses_flash_mla(self):
            raise NotImplementedError(
                f"{what}: Transformers' continuous batching runs its own paged cache and attention kernels, which "
                f"attn_implementation='flash_mla' does not plug into. Use model.generate() (padded batches are "
                f"supported), or set_attn_implementation('sdpa') for continuous batching.")
        return original(self, *args, **kwargs)

    method._hf_flashmla_original = original
    return method


def _patch(cls, name, wrapper_factory, *extra):
    current = getattr(cls, name, None)
    if current is None or hasattr(current, "_hf_flashmla_original"):
        return
    setattr(cls, name, wrapper_factory(current, *extra))


def _refusal_message(name, model_type, reason) -> str:
    if reason.sparse:
        return (f"attn_implementation='flash_mla': {name} ({model_type}) uses sparse (DSA) multi-head latent attention "
                f"({reason}); {SPARSE_MISSING}. Use 'eager' or 'sdpa'.")
    return f"attn_implementation='flash_mla': {name} ({model_type}) is not served: {reason}. Use 'eager' or 'sdpa'."


def _refusing_forward(original, model_type, reason):
    """The forward of an MLA attention class flash_mla does not serve: raises when its config was given
    "flash_mla" anyway (by hand, past the load-time check), so it never runs as something it is not."""
    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        if self.config._attn_implementation == ATTN_IMPLEMENTATION:
            error = NotImplementedError if reason.sparse else ValueError
            raise error(_refusal_message(type(self).__name__, model_type, reason))
        return original(self, *args, **kwargs)

    forward._hf_flashmla_original = original
    return forward


def refusal(model) -> str | None:
    """Why flash_mla cannot serve this model, or None when it can."""
    name = type(model).__name__
    for family in _families.values():
        if isinstance(model, family.model_classes):
            reason = family.refusal
            if reason is None:
                return None
            return _refusal_message(name, family.model_type, reason)
    served = served_families()
    message = (f"attn_implementation='flash_mla' serves Transformers' own multi-head latent attention models "
               f"(model types {', '.join(served)}); {name} is not one")
    if "transformers." not in type(model).__module__:
        message += " (trust_remote_code classes are not supported: load without trust_remote_code)"
    text_config = model.config.get_text_config(decoder=True)
    if text_config is not model.config and getattr(text_config, "model_type", None) in served:
        keys = getattr(model.config, "sub_configs", {})
        key = next((k for k in keys if getattr(model.config, k, None) is text_config), "text_config")
        message += (f", but its text model ({text_config.model_type}) is: pass attn_implementation="
                    f"{{'{key}': 'flash_mla', ...}} with 'sdpa' or 'eager' for its other sub-configs")
    return message + ". Use 'sdpa' or 'eager'."


def _model_check(original):
    """Refuses flash_mla at load / set_attn_implementation time for any model it does not serve (refusal())."""
    @functools.wraps(original)
    def _check_and_adjust_attn_implementation(self, attn_implementation, *args, **kwargs):
        if attn_implementation == ATTN_IMPLEMENTATION:
            reason = refusal(self)
            if reason is not None:
                raise ValueError(reason)
        return original(self, attn_implementation, *args, **kwargs)

    _check_and_adjust_attn_implementation._hf_flashmla_original = original
    return _check_and_adjust_attn_implementation


def _guard_flash_imports():
    """Names containing "flash" make from_pretrained/set_attn_implementation import a flash-attn package
    (lazy_import_flash_attention); flash_mla needs none."""
    import transformers.modeling_flash_attention_utils as fa_utils
    import transformers.modeling_utils as modeling_utils

    for module in (modeling_utils, fa_utils):
        original = getattr(module, "lazy_import_flash_attention", None)
        if original is None or hasattr(original, "_hf_flashmla_original"):
            continue

        def guarded(implementation=None, *args, _original=original, **kwargs):
            if implementation == ATTN_IMPLEMENTATION:
                return (None, None, None, None, None), (dict, dict)
            return _original(implementation, *args, **kwargs)

        guarded._hf_flashmla_original = original
        module.lazy_import_flash_attention = guarded


def _patch_deferred_stop():
    from transformers.generation import utils as generation_utils

    check = getattr(generation_utils, "DeferredStopCheck", None)
    if check is None or hasattr(check.is_supported, "_hf_flashmla_original"):
        return
    check.is_supported = staticmethod(decode_graphs.deferred_stop_for_graphs(check.is_supported))


def _version_supported(version: str) -> bool:
    """False (with a warning) below the supported range; past its newest tested release, True with a warning."""
    import warnings

    from hf_flashmla import transformers_range as supported
    try:
        found = supported.minor(version)
    except ValueError:
        found = None
    if found is not None and found < supported.OLDEST_MINOR:
        warnings.warn(f"hf_flashmla: attn_implementation='flash_mla' needs transformers >= {supported.OLDEST} "
                      f"(supported: {supported.REQUIREMENT}), found {version}; not registered (the kernel API works "
                      f"without it)")
        return False
    if found is None or found > supported.NEWEST_TESTED_MINOR:
        warnings.warn(f"hf_flashmla: transformers {version} is newer than the newest release tested with "
                      f"attn_implementation='flash_mla' ({supported.NEWEST_TESTED}; supported: "
                      f"{supported.REQUIREMENT}); registering anyway")
    return True


def register() -> bool:
    """Idempotent. Returns False when transformers cannot be imported or is too old."""
    global _registered
    if _registered:
        return True
    try:
        import transformers
        from transformers import AttentionInterface, GenerationMixin, PreTrainedModel
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:
        return False
    if not _version_supported(transformers.__version__):
        return False
    AttentionInterface.register(ATTN_IMPLEMENTATION, _unsupported_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, flash_mla_mask)
    _guard_flash_imports()
    _families.update(discover())
    for family in _families.values():
        for attention_class, form in family.attention_classes.items():
            if family.served:
                _patch(attention_class, "forward", _dispatching_forward)
            elif isinstance(form, UnservedAttention):
                _patch(attention_class, "forward", _refusing_forward, family.model_type, form)
        if family.served:
            for generating_class in family.generating_classes:
                _patch(generating_class, "forward", _budgeted_forward)
            for stack_class in family.decoder_stack_classes:
                _patch(stack_class, "forward", _closing_forward)
    # Once for every model; each wrapper passes models that do not use flash_mla to the original.
    _patch(GenerationMixin, "_prepare_cache_for_generation", _cache_preparing)
    _patch(GenerationMixin, "_valid_auto_compile_criteria", _graph_criteria)
    _patch(PreTrainedModel, "get_compiled_call", _graph_runner)
    _patch(GenerationMixin, "_optimize_model_for_decode", decode_graphs.keep_experts_for_decode)
    for method in ("generate_batch", "init_continuous_batching", "continuous_batching_context_manager"):
        _patch(GenerationMixin, method, _refusing, method)
    _patch(PreTrainedModel, "_check_and_adjust_attn_implementation", _model_check)
    _patch_deferred_stop()
    _registered = True
    return True


def served_families() -> list[str]:
    """The model types flash_mla serves with the installed Transformers (after register()), config-only ones
    (CONFIG_ONLY_FAMILIES) included."""
    served = {model_type for model_type, family in _families.items() if family.served}
    served |= {alias for alias, family in CONFIG_ONLY_FAMILIES.items() if family in served and has_config(alias)}
    return sorted(served)


def refused_families() -> dict[str, str]:
    """Model type -> why flash_mla refuses it, for the MLA families of the installed Transformers it does not serve."""
    return {model_type: str(family.refusal) for model_type, family in sorted(_families.items()) if not family.served}
