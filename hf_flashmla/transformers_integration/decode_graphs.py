"""generate()'s decode steps as CUDA graphs, for attn_implementation="flash_mla".

A decode step of an MLA model is hundreds of small kernels per layer; launched one by one from Python it
takes several times the GPU's own time. generate() already has a hook for replacing its forward call
(`get_compiled_call`, taken when `_valid_auto_compile_criteria` says so); for flash_mla models it returns a
DecodeGraphRunner, which replays a captured graph for every step of one token per sequence and calls the
model eagerly for anything else (prefill, chunks of several tokens, beam search's own forward calls).

What makes a step replayable:
- the cache reserves every sequence's pages for generate()'s max_length at the first step
  (LatentPagedCache(reserve_tokens=...)), so the pools and the block table do not change while decoding;
- the graph reads the block table and the lengths from device tensors of its own (a bucket's), which the
  runner copies from the cache's host state only when that state changed outside the graph (prefill,
  beam reorder, crop): LatentPagedCache.state_version tells;
- the write slots, the lengths after the step and the split-KV schedule are computed inside the graph from
  those tensors (LatentPagedCache.graph_step), and the lengths advance inside the graph; the host mirror
  advances by the same count without reading the device (graph_step_done);
- the mask function returns None (no per-step mask tensor), position ids come from a static buffer.

Batches are padded up to a bucket size (BUCKETS); a padding row has length 0, writes to the scratch page
and does not advance. Graphs are captured on first use of a bucket and kept, with the pools they write, in a
GraphArena per model; the next generate() takes the arena over (and its graphs) when no live cache holds it.
release(model) frees the arena. generate(..., disable_compile=True) turns graphs off. A model whose decode step
waits on the device (e.g. LongCat-Flash's experts loop on 5.17, which reads which experts were hit) cannot be
captured: the capture fails (GraphCaptureError) and the runner decodes that model eagerly, with a warning.
A replay runs no Python, so it adds to the path counters (counters.py) what its captured forward took.
"""
from __future__ import annotations

import copy
import warnings
import weakref

import torch

from hf_flashmla.latent_cache import LatentPagedCache, _to_device, cache_bytes_per_token_per_layer, pages_for
from hf_flashmla.transformers_integration.compat import cache_kwarg
from hf_flashmla.transformers_integration.counters import counters

BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)
GRAPH_QUERY_LENGTH = 1  # tokens per sequence in a replayed step
# Experts implementations without host syncs (transformers' "eager" loop reads which experts were hit).
_CAPTURABLE_EXPERTS = ("grouped_mm", "batched_mm")
_ARENA_ATTRIBUTE = "_hf_flashmla_graph_arena"


class GraphCaptureError(RuntimeError):
    """The model's decode step cannot be captured (it waits on the device, e.g. to read which experts were hit)."""


class _CudaGraph:
    """step(cache) captured once; replay(cache) returns the captured forward's logits (a static tensor)."""

    def __init__(self, step, cache, memory_pool):
        # Warm-up on a side stream first (cuBLAS workspaces, lazy initialisation), as torch.cuda.graphs asks.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step(cache)
        torch.cuda.current_stream().wait_stream(stream)
        # A step that waits on the device (nonzero, .item(), .tolist()) makes the capture fail with a CUDA error;
        # the CUDA context stays usable (the error ends the capture only). The warm-up cannot tell that in advance:
        # transformers skips some syncing checks only while a stream is capturing (utils.is_tracing).
        self.graph = torch.cuda.CUDAGraph()
        caller_stream = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(self.graph, pool=memory_pool):
                self.output = step(cache)
        except RuntimeError as error:
            # torch.cuda.graph's exit raised before it restored the caller's stream (capture_end fails first).
            torch.cuda.set_stream(caller_stream)
            raise GraphCaptureError(f"capturing the decode step failed: {error}") from error

    def replay(self, cache):
        self.graph.replay()
        return self.output


class _EmulatedGraph:
    """Runs the step again at each replay: the same data flow through the bucket's tensors as a CUDA graph,
    on any device. Only for tests of the bookkeeping on machines without CUDA (EMULATE_ON_CPU)."""

    def __init__(self, step, cache, memory_pool):
        self.step = step
        self.output = step(cache)

    def replay(self, cache):
        return self.step(cache)  # the step leaves the path counters as they were, as a real replay does


EMULATE_ON_CPU = False  # tests set it to exercise the runner's bookkeeping on the CPU


class _Bucket:
    """One captured batch size: the graph and the device tensors it reads and writes."""

    def __init__(self, arena: GraphArena, size: int, width: int, query_length: int):
        device = arena.device
        self.size, self.width, self.query_length = size, width, query_length
        self.epoch = arena.epoch
        self.input_ids = torch.zeros((size, query_length), dtype=torch.long, device=device)
        self.position_ids = torch.zeros((size, query_length), dtype=torch.long, device=device)
        self.block_table = torch.zeros((size, width), dtype=torch.int32, device=device)
        self.seqlens = torch.zeros((size,), dtype=torch.int32, device=device)
        self.advance = torch.zeros((size,), dtype=torch.int32, device=device)
        self.synced_version = None
        self.graph = None
        self.output_template = None
        self.replay_counts: list[tuple[str, int]] = []  # what each replay adds to the path counters

    def blank(self):
        """Every row a padding row: a warm-up or capture run then writes only the scratch page."""
        for tensor in (self.block_table, self.seqlens, self.advance):
            tensor.zero_()
        self.synced_version = None

    def sync(self, cache: LatentPagedCache):
        """The cache's lengths and block table into the graph's tensors (one host->device copy)."""
        lengths, table, width = cache.graph_view()
        batch = len(lengths)
        packed = torch.zeros((self.size, 2 + self.width), dtype=torch.int32)
        packed[:batch, 0] = torch.tensor(lengths, dtype=torch.int32)
        packed[:batch, 1] = 1
        packed[:batch, 2:2 + width] = table
        device_packed = _to_device(packed, self.seqlens.device)
        self.seqlens.copy_(device_packed[:, 0])
        self.advance.copy_(device_packed[:, 1])
        self.block_table.copy_(device_packed[:, 2:])
        self.synced_version = cache.state_version


class GraphArena:
    """Per model: the latent pools that decode graphs write (shared with the LatentPagedCache that owns the
    arena), the graphs by bucket, and one CUDA memory pool for all of them."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pools: dict[int, torch.Tensor] = {}
        self.capacity = 0
        self.epoch = 0
        self.buckets: dict[tuple[int, int], _Bucket] = {}
        self.memory_pool = None
        self.captures = 0
        self.capture_seconds = 0.0
        self._owner = None

    def __deepcopy__(self, memo):
        """A copied model (copy.deepcopy(model), e.g. for a float32 reference) starts with no pools or graphs of
        its own: the graphs captured this model's pools, and the pools are large."""
        return GraphArena(self.device)

    def pools_replaced(self, capacity: int):
        """A pool was (re)allocated: every graph captured the old tensors."""
        self.capacity = max(self.capacity, capacity)
        self.epoch += 1
        self.buckets.clear()

    def claim(self, cache: LatentPagedCache):
        self._owner = weakref.ref(cache)

    def is_free(self) -> bool:
        # The last step's output object (reused by every replay of a bucket) still names the cache it served.
        name = cache_kwarg()
        for bucket in self.buckets.values():
            if bucket.output_template is not None and name in bucket.output_template:
                bucket.output_template[name] = None
        return self._owner is None or self._owner() is None

    def release(self):
        self.pools.clear()
        self.buckets.clear()
        self.capacity = 0
        self.epoch += 1
        self.memory_pool = None


def arena_for(model, device: torch.device) -> GraphArena:
    """The model's arena if no live cache writes into it (and it is on this device), else a new one, which
    becomes the model's: a cache that a user kept from an earlier generate() keeps its own pools."""
    arena = getattr(model, _ARENA_ATTRIBUTE, None)
    if arena is None or not arena.is_free() or arena.device != device:
        arena = GraphArena(device)
        object.__setattr__(model, _ARENA_ATTRIBUTE, arena)
    return arena


def release(model) -> None:
    """Frees the decode graphs and latent pools that `model` keeps between generate() calls."""
    arena = getattr(model, _ARENA_ATTRIBUTE, None)
    if arena is not None:
        arena.release()
        object.__delattr__(model, _ARENA_ATTRIBUTE)


def bucket_size(batch: int) -> int | None:
    for size in BUCKETS:
        if size >= batch:
            return size
    return None


def model_device(model) -> torch.device | None:
    """The one device of the model's parameters, or None where they span several (device_map) or offload."""
    devices = {str(device) for device in getattr(model, "hf_device_map", {}).values()}
    if len(devices) > 1:
        return None
    parameter = next(model.parameters(), None)
    return None if parameter is None else parameter.device


def graphs_possible(model) -> bool:
    device = model_device(model)
    if device is None:
        return False
    return device.type == "cuda" or (EMULATE_ON_CPU and device.type == "cpu")


class DecodeGraphRunner:
    """generate()'s model_forward for flash_mla models: graph replays for one-token steps, eager otherwise."""

    def __init__(self, model):
        self._model = weakref.ref(model)
        self._cache_kwarg = cache_kwarg()
        self.replays = 0
        self.eager_calls = 0
        self.uncapturable: str | None = None  # why this model's decode steps run eagerly, once a capture failed

    def __deepcopy__(self, memo):
        """A copied model gets a runner of its own (this one names the original model)."""
        copied = memo.get(id(self._model()))
        return DecodeGraphRunner(copied if copied is not None else self._model())

    def __call__(self, *args, **kwargs):
        model = self._model()
        cache = kwargs.get(self._cache_kwarg)
        input_ids = kwargs.get("input_ids")
        if args or not self._replayable(model, cache, input_ids, kwargs):
            self.eager_calls += 1
            return model(*args, **kwargs)
        return self._replay(model, cache, input_ids, kwargs)

    def _replayable(self, model, cache, input_ids, kwargs) -> bool:
        if self.uncapturable is not None:
            return False
        if not isinstance(cache, LatentPagedCache) or cache._arena is None or torch.is_grad_enabled():
            return False
        if input_ids is None or kwargs.get("inputs_embeds") is not None or input_ids.dim() != 2:
            return False
        if any(kwargs.get(name) for name in ("output_attentions", "output_hidden_states", "output_router_logits",
                                             "labels")):
            return False
        batch, query_length = input_ids.shape
        if query_length != GRAPH_QUERY_LENGTH or bucket_size(batch) is None:
            return False
        if input_ids.device != cache._arena.device:
            return False
        return cache.graph_ready(batch, query_length)

    def _replay(self, model, cache, input_ids, kwargs):
        batch, query_length = input_ids.shape
        arena = cache._arena
        try:
            bucket = self._bucket(model, cache, arena, batch, query_length)
        except GraphCaptureError as error:
            self.uncapturable = str(error)
            warnings.warn(f"attn_implementation='flash_mla': {type(model).__name__}'s decode steps run eagerly, not "
                          f"as CUDA graphs ({error})", stacklevel=2)
            self.eager_calls += 1
            return model(**kwargs)
        if bucket.synced_version != cache.state_version:
            bucket.sync(cache)
        bucket.input_ids[:batch].copy_(input_ids)
        position_ids = kwargs.get("position_ids")
        if position_ids is None:  # what the model would compute: the cache's (padded) length onwards
            start = cache.get_seq_length()
            positions = torch.arange(start, start + query_length, device=bucket.position_ids.device)
            bucket.position_ids.copy_(positions[None, :].expand(bucket.size, -1))
        else:
            bucket.position_ids[:batch].copy_(position_ids.expand(batch, -1))
        logits = bucket.graph.replay(cache)
        cache.graph_step_done(query_length)
        self.replays += 1
        for path, calls in bucket.replay_counts:
            counters.add(path, calls)
        # One output object per bucket, refilled each step (building a ModelOutput costs more than the rest of
        # the host work of a replay); generate() copies what it keeps of it before the next step.
        result = bucket.output_template
        result["logits"] = logits[:batch].clone()
        if self._cache_kwarg in result:
            result[self._cache_kwarg] = cache
        return result

    def _bucket(self, model, cache, arena, batch, query_length) -> _Bucket:
        size = bucket_size(batch)
        width = cache._reserved_pages
        bucket = arena.buckets.get((size, query_length))
        if bucket is None or bucket.width < width or bucket.epoch != arena.epoch:
            bucket = _Bucket(arena, size, width, query_length)
            self._capture(model, cache, arena, bucket)
            arena.buckets[(size, query_length)] = bucket
        return bucket

    def _capture(self, model, cache, arena, bucket):
        import time

        started = time.perf_counter()
        cache_kwarg = self._cache_kwarg
        supports_logits_to_keep = getattr(model, "_supports_logits_to_keep", lambda: False)()

        def step(cache):
            # The warm-up and capture runs are not decode steps (blank rows): what they took is kept as what each
            # replay adds, and taken back from the counters.
            before = counters.snapshot()
            try:
                with cache.graph_step(bucket.block_table, bucket.seqlens, bucket.advance,
                                      bucket.query_length) as state:
                    inputs = {"input_ids": bucket.input_ids, "position_ids": bucket.position_ids,
                              "attention_mask": None, "use_cache": True, "return_dict": True, cache_kwarg: cache}
                    if supports_logits_to_keep:
                        inputs["logits_to_keep"] = 1
                    output = model(**inputs)
                bucket.replay_counts = _replay_counts(before, counters.snapshot())
            finally:
                counters.restore(before)
            bucket.seqlens.copy_(state.seqlens)
            if bucket.output_template is None:
                bucket.output_template = copy.copy(output)
            return output.logits

        bucket.blank()
        graph_class = _CudaGraph if arena.device.type == "cuda" else _EmulatedGraph
        if arena.device.type == "cuda" and arena.memory_pool is None:
            arena.memory_pool = torch.cuda.graph_pool_handle()
        with torch.no_grad(), _capturable_experts(model):
            bucket.graph = graph_class(step, cache, arena.memory_pool)
        bucket.synced_version = None  # the warm-up and capture ran on blank tensors
        arena.captures += 1
        arena.capture_seconds += time.perf_counter() - started


def _replay_counts(before: dict, after: dict) -> list[tuple[str, int]]:
    """What one replay adds to the path counters: the paths the captured forward took, one graph step, and its
    compiled-kernel calls again as graph_paged_kernel (generation_check counts kernel launches with them)."""
    taken = [(path, after[path] - before[path]) for path in after if after[path] != before[path]]
    kernel_calls = after["paged_kernel"] - before["paged_kernel"]
    return taken + [("graph_steps", 1)] + ([("graph_paged_kernel", kernel_calls)] if kernel_calls else [])


class _capturable_experts:
    """Within: the model's MoE experts run an implementation without host syncs (what is captured is what
    every replay runs): transformers' "eager" loop reads which experts were hit, so it is replaced by
    grouped_mm (the decode implementation flash_mla keeps, see keep_experts_for_decode). Models without
    switchable experts are left as they are."""

    def __init__(self, model):
        self.model = model
        self.original = None

    def __enter__(self):
        getter = getattr(self.model, "get_experts_implementation", None)
        if getter is None or not getattr(type(self.model), "_can_set_experts_implementation", lambda: False)():
            return self
        current = getter()
        wanted = {key: value if value in _CAPTURABLE_EXPERTS else "grouped_mm" for key, value in current.items()}
        if wanted != current:
            self.original = current
            self.model.set_experts_implementation(wanted)
        return self

    def __exit__(self, *exc):
        if self.original is not None:
            self.model.set_experts_implementation(self.original)
        return False


def reserve_tokens_for(model, batch: int, max_length: int, kv_cache_dtype: str = "auto") -> int | None:
    """max_length if reserving it for every sequence (the pools of a graph-decoded generate()) fits the free
    device memory with room to spare, else None (the cache then grows as it goes and decoding stays eager)."""
    device = model_device(model)
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    if device is None or device.type != "cuda":
        return max_length
    per_token = cache_bytes_per_token_per_layer(config.kv_lora_rank + config.qk_rope_head_dim, model.dtype,
                                                kv_cache_dtype, config.kv_lora_rank)
    layers = config.num_hidden_layers
    needed = batch * pages_for(max_length) * 64 * per_token * layers
    free, _ = torch.cuda.mem_get_info(device)
    return max_length if needed <= 0.5 * free else None


def keep_experts_for_decode(original):
    """generate() switches MoE experts from grouped_mm to batched_mm for decoding; batched_mm gathers each
    routed token's expert weights (top_k weight copies per token per layer). With flash_mla, decoding keeps
    the model's implementation: on the DeepSeek-V2-Lite shape (64 experts of 1408, top-6, H100, CUDA graphs)
    a decode step at 4K x 8 took 15.7 ms with grouped_mm against 27.5 ms with batched_mm, and 10.1 against
    10.3 ms at 32K x 1. Eager and graph steps then run the same experts code (the same tokens)."""
    import contextlib
    import functools

    from hf_flashmla.transformers_integration.attention import ATTN_IMPLEMENTATION

    @functools.wraps(original)
    def _optimize_model_for_decode(self, *args, **kwargs):
        if self.config._attn_implementation == ATTN_IMPLEMENTATION:
            return contextlib.nullcontext()
        return original(self, *args, **kwargs)

    _optimize_model_for_decode._hf_flashmla_original = original
    return _optimize_model_for_decode


def deferred_stop_for_graphs(original):
    """transformers' DeferredStopCheck reads "every sequence finished?" one step late, so that the host queues
    the next step while the device runs this one, instead of waiting for it every step (transformers enables it
    on mps only). With graph-decoded steps the host's own work per step (generate()'s bookkeeping, sampling,
    stopping criteria) is what remains of the step beyond the device's time, so it is enabled for a CUDA
    LatentPagedCache in graph mode: a step then takes about the larger of the two instead of their sum. The
    extra step it runs when every sequence stops at an EOS is undone (cache.crop), as transformers does."""
    import functools

    @functools.wraps(original)
    def is_supported(device, cache, cache_is_returned, is_assistant, *args, **kwargs):
        if (isinstance(cache, LatentPagedCache) and cache._arena is not None and device.type == "cuda"
                and not is_assistant):
            return True
        return original(device, cache, cache_is_returned, is_assistant, *args, **kwargs)

    is_supported._hf_flashmla_original = original
    return is_supported
