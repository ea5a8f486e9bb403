"""Paged latent KV cache for multi-head latent attention (DeepSeek-V2/V3) under Transformers' generate().

Per token and layer it stores only the latent: the normalised c_kv (kv_lora_rank values, 512 for the
real models) followed by the roped k_pe (qk_rope_head_dim, 64), i.e. one row of 576 values, in pages of
64 tokens. Each layer has one pool `[num_pages, 64, 1, latent_dim]` on that layer's device (layers may
live on different devices under device_map); pools of all layers have the same number of pages and
page `p` of every pool holds the same tokens, so the per-sequence lengths and block tables are shared
by all layers and mirrored once per device.

Bookkeeping is on the host (Python ints): the cache knows how many tokens each sequence holds without
reading device memory. Padding tokens (zeros of the attention mask) are not stored: a sequence's length
counts only its real tokens. Reading the mask costs one device->host copy; that happens when a chunk
may contain padding (the first chunk, chunks longer than one token, CPU tensors, or with
HF_FLASHMLA_CHECK_VALUES=1). A one-token step of an already started batch is taken as all real tokens,
which is what generate() always passes.

Page 0 of every pool is a scratch page: padding tokens are written there (so the write needs no
host-side compaction), and unused block-table entries point at it. It is never read as a real token.

The pool grows as needed (doubling), or is fixed by the user (`max_pages`); when a step does not fit,
`LatentCacheFullError` is raised before anything is written, and the cache stays usable. Beam reordering
moves page ownership rather than contents: a row that one new row takes keeps its pages, only a row taken
twice is copied (into the pages of the rows that no one took), so beam search needs no spare pages when the
beams of a prompt have the same length (they do under generate()). A cache that reserves its pages for CUDA
graphs (reserve_tokens) keeps its block table instead: each row copies its source into its own pages, which
needs no spare pages either.

kv_cache_dtype="fp8_e4m3" stores each token's latent row in FlashMLA's FP8 layout instead (hf_flashmla/fp8_latent.py:
656 bytes for 512 + 64, a uint8 pool [num_pages, 64, 1, 656]); the latent is quantized on its device as it is
written, and every reader (the kernels, the reference, the dense prefill) sees it dequantized, so all routes
attend to the same keys. Everything else (pages, reorders, crops, graphs) is byte-for-byte the same.

It implements the transformers Cache API of every supported release (hf_flashmla/transformers_range.py);
what belongs to other layer kinds (linear-attention conv/recurrent states, DSA indexer keys, offloading,
static early initialization) raises an error that names the feature.
"""
from __future__ import annotations

import contextlib
import itertools

import torch

from hf_flashmla import _ops, dispatch, fp8_latent
from hf_flashmla.interface import _value_checks_requested
from hf_flashmla.schedule import PAGE_SIZE

try:  # the cache is a transformers Cache so that generate() and the masking utilities accept it
    from transformers.cache_utils import Cache as _TransformersCache
except ImportError:  # transformers is optional for the kernel API; the cache still works standalone
    _TransformersCache = object

SCRATCH_PAGE = 0
MAX_PAGES = 2 ** 31 - 2  # the kernels' block ids are int32, and page 0 is the scratch page
DEFAULT_ROPE_DIM = 64  # an FP8 cache built without a model config takes the last 64 values as the rope part
FP8_MODEL_DTYPES = (torch.bfloat16, torch.float32)
FUSED_FP8_RANK, FUSED_FP8_ROW = 512, 576  # the latent the fused FP8 write kernel takes (csrc/fp8_latent_write.cu)
# Every change of the host-side state (a step, a rollback, a crop, a reorder, a reset) takes a new number from
# here, unique across caches: a CUDA-graph bucket knows whether its device copy of a cache's lengths and block
# table is current by comparing one int (hf_flashmla.transformers_integration.decode_graphs).
_STATE_VERSIONS = itertools.count(1)


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without waiting on the device: pinned staging (PyTorch's caching host allocator
    keeps the buffer alive until the copy has run) on CUDA."""
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


class _FreePages:
    """The free page ids: pages given back (taken again first, last given first) and the never-used ids
    [fresh, end), lowest first. Held as a range, so that a large max_pages costs nothing until its pages are used."""

    def __init__(self, end: int):
        self._given_back: list[int] = []
        self._fresh = SCRATCH_PAGE + 1
        self._end = end

    def __len__(self) -> int:
        return len(self._given_back) + self._end - self._fresh

    def pop(self) -> int:
        if self._given_back:
            return self._given_back.pop()
        if self._fresh >= self._end:
            raise IndexError("pop from an empty free list")
        self._fresh += 1
        return self._fresh - 1

    def extend(self, pages) -> None:
        self._given_back.extend(pages)

    def grow(self, end: int) -> None:
        """The pool now has `end` pages: the new ids are taken after every other free one."""
        self._end = end

    def copy(self) -> _FreePages:
        other = _FreePages(self._end)
        other._given_back, other._fresh = list(self._given_back), self._fresh
        return other


class LatentCacheFullError(RuntimeError):
    """The step needs more pages than the user-sized pool has free; nothing was written."""


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class _DeviceStep:
    """The step's shared tensors on one device: built once, used by every layer on that device."""

    def __init__(self):
        self.block_table: torch.Tensor | None = None      # int32 [b, max_pages]
        self.seqlens_before: torch.Tensor | None = None   # int32 [b]
        self.seqlens: torch.Tensor | None = None          # int32 [b], after this step's tokens
        self.write_slots: torch.Tensor | None = None      # int64 [b * s], flat row in the pool
        self.token_mask: torch.Tensor | None = None       # bool [b, s] or None (all real)
        self.metadata: dict = {}                          # (num_heads) -> get_mla_metadata output


class _Step:
    """One forward pass: which tokens it adds, per sequence, and which layers have written them."""

    def __init__(self, step_id, query_length, lengths_before, lengths_after, logical_before, token_mask,
                 left_padded):
        self.step_id = step_id
        self.query_length = query_length
        self.lengths_before = lengths_before
        self.lengths_after = lengths_after
        self.logical_before = logical_before
        self.token_mask = token_mask          # host or device bool [b, s]; None: every token is real
        self.left_padded = left_padded        # real tokens of every row are contiguous at its end
        self.layers_written: set[int] = set()
        self.devices: dict[torch.device, _DeviceStep] = {}
        self.previous: _Step | None = None


class _GraphStep:
    """A decode step inside a CUDA graph: every tensor derives from the graph's persistent device tensors
    (block table, lengths, and which rows advance: 1 for a real sequence, 0 for a bucket's padding row), so a
    replay reads the values of the moment, never what the host knew at capture."""

    def __init__(self, block_table: torch.Tensor, seqlens: torch.Tensor, advance: torch.Tensor, query_length: int):
        self.step = _Step(0, query_length, None, None, None, None, True)
        state = _DeviceStep()
        state.block_table = block_table
        state.seqlens_before = seqlens
        state.seqlens = seqlens + advance * query_length
        position = seqlens[:, None] + torch.arange(query_length, device=seqlens.device, dtype=seqlens.dtype)
        page_col = (position // PAGE_SIZE).clamp(max=block_table.shape[1] - 1).to(torch.long)
        slots = block_table.gather(1, page_col).to(torch.long) * PAGE_SIZE + (position % PAGE_SIZE).to(torch.long)
        state.write_slots = slots.reshape(-1)
        self.state = state


class LatentPagedCache(_TransformersCache):
    """Paged latent cache; see the module docstring.

    config: the model config (gives the number of layers and the latent width); or pass
    num_hidden_layers / latent_dim directly. max_pages: fixed pool size in pages per layer (excluding
    the scratch page); None grows as needed. initial_pages: first pool size when growing.
    reserve_tokens: at the first step of a batch, every sequence gets the pages for this many tokens at
    once (generate() passes its max_length), so that decoding never allocates and the block table never
    changes: what CUDA-graph decoding needs (decode_graphs). A sequence may still grow past it (eagerly).
    graph_arena: the decode_graphs.GraphArena whose pools this cache writes into (set by generate()).
    latent_layers: the indices of the layers that store latents, when only some do (hf_flashmla.
    HybridLatentCache passes a hybrid model's MLA layers); None: every layer.
    kv_cache_dtype: "auto" (the latent in the model's dtype) or "fp8_e4m3" (FlashMLA's FP8 layout, see the module
    docstring; bf16 models, or float32 where the reference serves them). Without a config, an FP8 cache takes the
    rope part to be the last 64 values.
    """

    def __init__(self, config=None, *, num_hidden_layers: int | None = None, latent_dim: int | None = None,
                 max_pages: int | None = None, initial_pages: int = 64, reserve_tokens: int | None = None,
                 graph_arena=None, latent_layers=None, kv_cache_dtype: str = "auto"):
        # Not calling Cache.__init__: its per-layer objects do not apply to a shared paged pool, and its
        # signature differs between transformers releases. The attributes generate() reads are set here.
        self.layers = []
        self.layer_class_to_replicate = None
        self.offloading = False
        for name, value in (("num_hidden_layers", num_hidden_layers), ("latent_dim", latent_dim),
                            ("max_pages", max_pages)):
            if value is not None and not _is_positive_int(value):
                raise ValueError(f"{name}: expected a positive int or None, got {value!r}")
        if not _is_positive_int(initial_pages):
            raise ValueError(f"initial_pages: expected a positive int, got {initial_pages!r}")
        if reserve_tokens is not None and not _is_positive_int(reserve_tokens):
            raise ValueError(f"reserve_tokens: expected a positive int or None, got {reserve_tokens!r}")
        for name, value in (("max_pages", max_pages), ("initial_pages", initial_pages)):
            if value is not None and value > MAX_PAGES:
                raise ValueError(f"{name}: expected at most {MAX_PAGES} pages (block ids are int32, page 0 is the "
                                 f"scratch page), got {value}")
        self.reserve_tokens = reserve_tokens
        self.kv_cache_dtype = fp8_latent.kv_cache_dtype_or_default(kv_cache_dtype)
        self._arena = graph_arena
        self._graph_step = None  # set by decode_graphs while a decode step is captured or replayed
        if config is not None:
            text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
            kv_lora_rank = getattr(text_config, "kv_lora_rank", None)
            rope_dim = getattr(text_config, "qk_rope_head_dim", None)
            if kv_lora_rank is None or rope_dim is None:
                raise ValueError(f"config: LatentPagedCache needs an MLA model config (kv_lora_rank and "
                                 f"qk_rope_head_dim); {type(config).__name__} has none")
            other_layers = sorted(set(getattr(text_config, "layer_types", None) or ()) - {"full_attention"})
            if other_layers and latent_layers is None:
                raise ValueError(f"config: {type(config).__name__} has {other_layers} layers besides its MLA layers; "
                                 f"use hf_flashmla.HybridLatentCache(config), which keeps their state too")
            num_hidden_layers = num_hidden_layers or getattr(text_config, "num_hidden_layers", None)
            latent_dim = latent_dim or kv_lora_rank + rope_dim
        if latent_layers is not None:
            latent_layers = tuple(latent_layers)
            if not latent_layers or any(not isinstance(i, int) or isinstance(i, bool) or i < 0 or
                                        (num_hidden_layers is not None and i >= num_hidden_layers)
                                        for i in latent_layers):
                raise ValueError(f"latent_layers: expected layer indices in [0, {num_hidden_layers}), got "
                                 f"{latent_layers!r}")
        self.latent_layers = latent_layers
        self.num_hidden_layers = num_hidden_layers
        self.latent_dim = latent_dim
        # The latent's width before the rope part: what the FP8 layout quantizes.
        self.kv_lora_rank = kv_lora_rank if config is not None else None
        if self.is_fp8:
            if self.kv_lora_rank is None and latent_dim is not None:
                self.kv_lora_rank = latent_dim - DEFAULT_ROPE_DIM
            if self.kv_lora_rank is not None:
                fp8_latent.check_latent_shape(self.kv_lora_rank, latent_dim - self.kv_lora_rank)
        self.max_pages = max_pages
        # Pages per pool, scratch page included (an arena's pools may already hold more).
        self._capacity = (max_pages if max_pages is not None else initial_pages) + 1
        if graph_arena is not None and max_pages is None:
            self._capacity = max(self._capacity, graph_arena.capacity)
        if graph_arena is not None:
            held_as_bytes = {pool.dtype == torch.uint8 for pool in graph_arena.pools.values()}
            if held_as_bytes and held_as_bytes != {self.is_fp8}:
                graph_arena.release()  # its pools hold the other layout (an earlier generate() of this model)
        self._pools: dict[int, torch.Tensor] = {} if graph_arena is None else graph_arena.pools
        self.reset()

    # ----------------------------------------------------------------------------------------- state
    def reset(self):
        """Forget every sequence; the pools are kept for reuse."""
        self._lengths: list[int] = []           # real tokens stored, per sequence
        self._pages: list[list[int]] = []       # page ids, per sequence
        self._free = _FreePages(self._capacity)
        self._logical_length = 0                # tokens seen per row, padding included (the mask's width)
        self._table = torch.zeros((0, 0), dtype=torch.int32)
        self._table_version = 0
        self._device_tables: dict[torch.device, tuple[int, torch.Tensor]] = {}
        self._step: _Step | None = None
        self._last_step: _Step | None = None   # device lengths of a plain continuation derive from it
        self._step_counter = 0
        self._reserved_pages = 0                # pages every sequence keeps (reserve_tokens), set at the first step
        self._row_logical: list[int] | None = None  # per-row padded lengths while row blocks differ (rows())
        self._window = None                     # (start, stop, full lengths, full pages) inside rows()
        self.state_version = next(_STATE_VERSIONS)

    @property
    def is_fp8(self) -> bool:
        return self.kv_cache_dtype == fp8_latent.FP8_E4M3

    def bytes_per_token_per_layer(self, dtype: torch.dtype) -> int:
        """Bytes of one token's latent row in a layer's pool, for a model computing in dtype (656 in FP8)."""
        if self.latent_dim is None:
            raise ValueError("latent_dim: unknown until the first write (build the cache with the model config)")
        return cache_bytes_per_token_per_layer(self.latent_dim, dtype, self.kv_cache_dtype, self.kv_lora_rank)

    @property
    def batch_size(self) -> int:
        return len(self._lengths) if self._lengths or self._logical_length else -1

    @property
    def sequence_lengths(self) -> list[int]:
        """Real tokens stored per sequence (padding excluded)."""
        self._settle()
        return list(self._lengths)

    @property
    def num_pages_in_use(self) -> int:
        return sum(len(pages) for pages in self._pages)

    @property
    def pool_pages(self) -> int:
        """Pages per layer pool, the scratch page included."""
        return self._capacity

    def pool(self, layer_idx: int) -> torch.Tensor | None:
        return self._pools.get(layer_idx)

    def nbytes(self) -> int:
        """Bytes held by the pools of all layers."""
        return sum(pool.numel() * pool.element_size() for pool in self._pools.values())

    def used_bytes(self) -> int:
        """Bytes of the stored tokens themselves (real tokens x layers x latent row)."""
        self._settle()
        return sum(self._lengths) * sum(pool.shape[-1] * pool.element_size() for pool in self._pools.values())

    def __repr__(self):
        fp8 = f", kv_cache_dtype={self.kv_cache_dtype!r}" if self.is_fp8 else ""
        return (f"LatentPagedCache(batch={len(self._lengths)}, lengths={self._lengths}, layers={len(self._pools)}, "
                f"pool_pages={self._capacity}, pages_in_use={self.num_pages_in_use}{fp8})")

    def __len__(self):
        return self.num_hidden_layers or len(self._pools)

    # ------------------------------------------------------------------ transformers Cache interface
    # These are asked before a forward pass, never between its layers: an unfinished step seen here
    # belongs to a forward pass that raised, so it is rolled back first.
    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        self._settle()
        return self._logical_length

    def get_query_offset(self, layer_idx: int = 0) -> int:
        self._settle()
        return self._logical_length

    def get_mask_sizes(self, query_length, layer_idx: int = 0) -> tuple[int, int]:
        if isinstance(query_length, torch.Tensor):  # older releases pass cache_position
            query_length = query_length.shape[0]
        self._settle()
        return self._logical_length + query_length, 0

    def mask_width(self, query_length: int) -> int:
        """The attention mask's width for a forward pass of query_length tokens: the tokens before it (padding
        included) and its own; the same at every layer of the pass."""
        before = self._step.logical_before if self._step is not None else self._logical_length
        return before + query_length

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:  # before 5.20
        return -1

    @property
    def max_cache_len(self) -> int:  # before 5.20
        return -1

    @property
    def max_batch_size(self) -> int:  # before 5.20
        return self.batch_size

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return bool(self._pools)

    @property
    def is_croppable(self) -> bool:
        return True

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self)

    @property
    def is_linear(self) -> list[bool]:
        return [False] * len(self)

    @property
    def is_dummy(self) -> list[bool]:
        return [False] * len(self)

    def update(self, *args, **kwargs):
        raise NotImplementedError(
            "update: LatentPagedCache holds paged MLA latents written by attn_implementation='flash_mla'; it cannot "
            "serve the stock attention's cache.update. Load the model with attn_implementation='flash_mla' (after "
            "`import hf_flashmla`), or pass a DynamicCache for other attention implementations.")

    def early_initialization(self, *args, **kwargs):
        raise NotImplementedError("early_initialization: LatentPagedCache is not a static cache: it grows as "
                                  "needed (size it with max_pages instead)")

    # Past recording exists for caches that drop history (linear attention, sliding windows) so that assisted
    # decoding and DeferredStopCheck can roll back; this cache keeps every token, so crop() can undo any number
    # of steps with or without it, and it has no recurrent states to keep: as DynamicCache's full-attention
    # layers, it reports 0 states and no recording.
    def activate_past_recording(self, recurrent_states_to_keep: int | None = None):
        check_states_to_keep(recurrent_states_to_keep)

    def is_recording_past(self, layer_idx: int) -> bool:
        self._check_layer_idx(layer_idx)
        return False

    def get_recurrent_states_to_keep(self, layer_idx: int | None = None) -> int:
        if layer_idx is not None:
            self._check_layer_idx(layer_idx)
        return 0

    # ---------------------------------------------------- Cache API of the layer kinds this cache has not
    def _check_layer_idx(self, layer_idx):
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int):
            raise TypeError(f"layer_idx: expected an int, got {type(layer_idx).__name__}")
        if self.num_hidden_layers is not None and not 0 <= layer_idx < self.num_hidden_layers:
            raise ValueError(f"layer_idx: expected 0 <= layer_idx < {self.num_hidden_layers}, got {layer_idx}")

    def _not_linear_attention(self, method: str):
        raise ValueError(f"{method}: LatentPagedCache holds only multi-head latent attention layers; conv and "
                         f"recurrent states belong to linear-attention (Mamba/SSM) layers, which it does not serve. "
                         f"Use a DynamicCache for such models.")

    def has_previous_state(self, layer_idx: int | None = None, state_idx: int | None = None) -> bool:
        self._not_linear_attention("has_previous_state")

    def get_conv_state(self, layer_idx: int, state_idx: int = 0):
        self._not_linear_attention("get_conv_state")

    def update_conv_state(self, conv_states, layer_idx: int, state_idx: int = 0, **kwargs):
        self._not_linear_attention("update_conv_state")

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0):
        self._not_linear_attention("get_recurrent_state")

    def update_recurrent_state(self, recurrent_states, layer_idx: int, state_idx: int = 0, **kwargs):
        self._not_linear_attention("update_recurrent_state")

    def increase_count(self, layer_idx: int, state_idx: int):
        self._not_linear_attention("increase_count")

    def update_indexer(self, indexer_key_states, layer_idx: int):
        raise ValueError("update_indexer: LatentPagedCache has no indexer key cache (the sparse-attention indexer "
                         "of DeepSeek-V3.2 / GLM-MoE-DSA models); attn_implementation='flash_mla' serves dense MLA")

    def offload(self, layer_idx: int, only_non_sliding: bool = True):
        raise NotImplementedError("offload: LatentPagedCache does not offload its pools to the CPU (the latent is "
                                  "a small fraction of a full K/V cache); size it with max_pages instead")

    def prefetch(self, layer_idx: int, only_non_sliding: bool = True):
        raise NotImplementedError("prefetch: LatentPagedCache does not offload its pools, so there is nothing to "
                                  "prefetch")

    def crop(self, tokens_to_remove: int) -> None:
        """Negative n removes |n| tokens from every sequence (transformers >= 5.x); a positive n keeps the
        first n tokens of the padded width (the older convention)."""
        remove = self._positions_to_remove(tokens_to_remove)
        if remove == 0:
            return
        self._logical_length -= remove
        self._last_step = None
        # Cropped tokens are the most recent ones, which are real tokens (generate() never pads on the right).
        self._lengths = [max(length - remove, 0) for length in self._lengths]
        self._release_unused_pages()
        self.state_version = next(_STATE_VERSIONS)

    def _positions_to_remove(self, tokens_to_remove) -> int:
        """crop()'s argument as the number of positions it removes (checked: TypeError / ValueError)."""
        if isinstance(tokens_to_remove, torch.Tensor) and tokens_to_remove.numel() == 1 and \
                not tokens_to_remove.is_floating_point():
            tokens_to_remove = int(tokens_to_remove)  # some releases pass a 0-dim tensor
        if isinstance(tokens_to_remove, bool) or not isinstance(tokens_to_remove, int):
            raise TypeError(f"tokens_to_remove: expected an int, got {type(tokens_to_remove).__name__}")
        self._settle()
        remove = -tokens_to_remove if tokens_to_remove <= 0 else max(self._logical_length - tokens_to_remove, 0)
        if remove > self._logical_length:
            raise ValueError(f"tokens_to_remove: the cache holds {self._logical_length} positions, cannot remove "
                             f"{remove}")
        return remove

    def reorder_cache(self, beam_idx: torch.LongTensor):
        """Sequence i takes the contents of sequence beam_idx[i] (beam search)."""
        self._select(beam_idx, "beam_idx")

    def batch_select_indices(self, indices: torch.Tensor):
        """Keeps sequences `indices`, in that order (the batch size becomes len(indices))."""
        self._select(indices, "indices")

    def batch_repeat_interleave(self, repeats: int):
        """Each sequence becomes `repeats` consecutive copies of itself (e.g. one prefilled prompt, several
        samples)."""
        if not _is_positive_int(repeats):
            raise ValueError(f"repeats: expected a positive int, got {repeats!r}")
        order = [i for i in range(len(self._lengths)) for _ in range(repeats)]
        self._select(order, "repeats")

    # ------------------------------------------------------------------------------ page management
    def _release_unused_pages(self):
        changed = False
        for seq, length in enumerate(self._lengths):
            keep = max(pages_for(length), self._reserved_pages)
            pages = self._pages[seq]
            if len(pages) > keep:
                self._free.extend(reversed(pages[keep:]))
                del pages[keep:]
                changed = True
        if changed:
            self._rebuild_table()

    def _ensure_free(self, needed: int):
        """Makes `needed` pages free, growing the pools' capacity, or raises LatentCacheFullError."""
        if needed <= len(self._free):
            return
        short = needed - len(self._free)
        if self.max_pages is not None:
            raise LatentCacheFullError(
                f"LatentPagedCache: this step needs {needed} free pages of {PAGE_SIZE} tokens but only "
                f"{len(self._free)} of max_pages={self.max_pages} are free (lengths {self._lengths}); nothing was "
                f"written. Create the cache with a larger max_pages, or crop()/reset() it.")
        # A reserving cache asks once per batch for exactly what it needs; a growing one doubles, as far as the
        # devices' free memory allows.
        minimum = self._capacity + short
        wanted = minimum if self._reserved_pages else max(self._capacity * 2, minimum)
        affordable = self._affordable_capacity(needed, minimum)
        new_capacity = wanted if affordable is None else min(wanted, affordable)
        self._free.grow(new_capacity)
        self._capacity = new_capacity  # pools follow lazily, each on its own device at its next write

    def _affordable_capacity(self, needed: int, minimum: int) -> int | None:
        """The largest pool size (pages, every layer) that the free memory of the pools' CUDA devices holds
        (None: no CUDA pool, no limit); raises LatentCacheFullError where even `minimum` does not fit (before
        anything is written)."""
        page_bytes: dict[torch.device, int] = {}
        for pool in self._pools.values():
            if pool.device.type == "cuda":
                page_bytes[pool.device] = page_bytes.get(pool.device, 0) + pool[0].numel() * pool.element_size()
        affordable = None
        for device, per_page in page_bytes.items():
            free, _ = torch.cuda.mem_get_info(device)
            free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            pages = self._capacity + int(0.9 * free) // per_page
            if pages < minimum:
                raise LatentCacheFullError(
                    f"LatentPagedCache: this step needs {needed} free pages of {PAGE_SIZE} tokens but only "
                    f"{len(self._free)} are free (lengths {self._lengths}), and growing the pools to {minimum} pages "
                    f"needs {(minimum - self._capacity) * per_page / 2**30:.2f} GiB more on {device}, which has "
                    f"{free / 2**30:.2f} GiB free; nothing was written. Use a smaller batch or max_new_tokens.")
            affordable = pages if affordable is None else min(affordable, pages)
        return affordable

    def _allocate_to(self, seq: int, length: int):
        pages = self._pages[seq]
        while len(pages) * PAGE_SIZE < length:
            pages.append(self._free.pop())

    def _pages_needed(self, lengths: list[int]) -> int:
        return sum(max(pages_for(length) - len(pages), 0) for length, pages in zip(lengths, self._pages))

    def _append_to_table(self, appended):
        width = max(len(self._pages[seq]) for seq, _ in appended)
        if width > self._table.shape[1] or self._table.shape[0] != len(self._pages):
            self._rebuild_table(min_width=2 * width)  # room for the next pages without a rebuild
            return
        for seq, first in appended:
            pages = self._pages[seq]
            self._table[seq, first:len(pages)] = torch.tensor(pages[first:], dtype=torch.int32)
        self._table_version += 1

    def _rebuild_table(self, min_width: int = 1):
        width = max([len(pages) for pages in self._pages] + [min_width])
        table = torch.full((len(self._pages), width), SCRATCH_PAGE, dtype=torch.int32)
        for seq, pages in enumerate(self._pages):
            if pages:
                table[seq, :len(pages)] = torch.tensor(pages, dtype=torch.int32)
        self._table = table
        self._table_version += 1

    def _device_table(self, device: torch.device) -> torch.Tensor:
        cached = self._device_tables.get(device)
        if cached is not None and cached[0] == self._table_version:
            return cached[1]
        table = _to_device(self._table, device)
        self._device_tables[device] = (self._table_version, table)
        return table

    def _select(self, indices, name: str):
        self._settle()
        indices = _host_indices(indices, name)
        batch = len(self._lengths)
        if any(i < 0 or i >= batch for i in indices):
            raise ValueError(f"{name}: expected indices in [0, {batch}), got {indices}")
        if indices == list(range(batch)):
            return
        self.state_version = next(_STATE_VERSIONS)
        if self._reserved_pages and len(indices) == batch:
            self._select_into_own_pages(indices)
            return
        # The first new row that takes an old row takes its pages as they are; a second one gets a copy of them.
        # Rows that no one takes give their pages back first, so the copies land there: the pool needs spare
        # pages only where the copied rows are longer than the dropped ones.
        owner: dict[int, int] = {}
        for row, source in enumerate(indices):
            owner.setdefault(source, row)
        copies = [(row, source) for row, source in enumerate(indices) if owner[source] != row]
        released = [page for row, pages in enumerate(self._pages) if row not in owner for page in pages]
        needed = sum(pages_for(self._lengths[source]) for _, source in copies)
        free_before = self._free.copy()
        self._free.extend(reversed(released))
        try:
            self._ensure_free(needed)  # raises before anything changes
        except LatentCacheFullError:
            self._free = free_before
            raise
        old_pages, old_lengths = self._pages, self._lengths
        self._pages = [old_pages[source] if owner[source] == row else [] for row, source in enumerate(indices)]
        self._lengths = [old_lengths[source] for source in indices]
        for row, _ in copies:
            self._allocate_to(row, self._lengths[row])
        if copies and self._pools:
            src_ids = [page for _, source in copies for page in old_pages[source][:pages_for(old_lengths[source])]]
            dst_ids = [page for row, _ in copies for page in self._pages[row]]
            for layer_idx in list(self._pools):
                pool = self._grown_pool(layer_idx)
                src = torch.tensor(src_ids, dtype=torch.long).to(pool.device, non_blocking=True)
                dst = torch.tensor(dst_ids, dtype=torch.long).to(pool.device, non_blocking=True)
                pool.index_copy_(0, dst, pool.index_select(0, src))  # sources are never among the destinations
        self._last_step = None
        self._rebuild_table()

    def _select_into_own_pages(self, indices: list[int]):
        """Reorder where every sequence keeps its reserved pages (and so the block table): sequence i's used
        pages receive a copy of sequence indices[i]'s. index_select gathers every source before index_copy_
        writes, so a sequence that is both a source and a destination is read before it is overwritten. Needs
        no free pages beyond a longer source's extra pages, where the destination had fewer."""
        new_lengths = [self._lengths[i] for i in indices]
        # Every extra page at once, before any row takes one: a failure half-way used to leave rows holding pages
        # that the block table did not show (and the next write of those rows went to the scratch page).
        self._ensure_free(sum(max(pages_for(self._lengths[source]) - len(self._pages[seq]), 0)
                              for seq, source in enumerate(indices) if seq != source))
        src_ids, dst_ids = [], []
        grew = []
        for seq, source in enumerate(indices):
            if seq == source:
                continue
            used = pages_for(self._lengths[source])
            if used > len(self._pages[seq]):
                before = len(self._pages[seq])
                self._allocate_to(seq, used * PAGE_SIZE)
                grew.append((seq, before))
            src_ids += self._pages[source][:used]
            dst_ids += self._pages[seq][:used]
        if grew:
            self._append_to_table(grew)
        for layer_idx in list(self._pools):
            pool = self._grown_pool(layer_idx)
            if src_ids:
                src = torch.tensor(src_ids, dtype=torch.long).to(pool.device, non_blocking=True)
                dst = torch.tensor(dst_ids, dtype=torch.long).to(pool.device, non_blocking=True)
                pool.index_copy_(0, dst, pool.index_select(0, src))
        self._lengths = new_lengths
        self._last_step = None

    def _grown_pool(self, layer_idx: int) -> torch.Tensor:
        pool = self._pools[layer_idx]
        if pool.shape[0] < self._capacity:
            grown = pool.new_zeros((self._capacity,) + tuple(pool.shape[1:]))
            grown[:pool.shape[0]].copy_(pool)
            self._pools[layer_idx] = pool = grown
            self._pools_changed()
        return pool

    def _pools_changed(self):
        """A pool tensor was created or replaced: CUDA graphs that captured the old one must not replay."""
        if self._arena is not None:
            self._arena.pools_replaced(self._capacity)

    # ------------------------------------------------------------------------------------ the steps
    def _settle(self):
        """Closes the current step; a step that did not reach every layer (an exception mid-forward) is
        rolled back so that the cache stays consistent."""
        step = self._step
        if step is None:
            return
        self._step = None
        expected = self.num_hidden_layers if self.latent_layers is None else len(set(self.latent_layers))
        if expected is not None and len(step.layers_written) < expected:
            self._roll_back(step)
        else:
            self._last_step = step

    def _roll_back(self, step: _Step):
        self._lengths = list(step.lengths_before)
        self._logical_length = step.logical_before
        self._release_unused_pages()
        self._last_step = None
        self.state_version = next(_STATE_VERSIONS)

    @contextlib.contextmanager
    def forward_pass(self):
        """The integration runs the decoder stack's forward inside this, which makes a step's end exact:
        - an exception rolls the step back, also one raised after the last layer wrote (in its MLP, say);
        - a forward pass that returns without every layer having written was not cut short, so this cache
          was built for layers that do not run (a pruned model, a hand-built cache): the step is rolled
          back, as every later one would be, and refused instead of serving tokens that attend to nothing."""
        self._settle()
        try:
            yield self
        except BaseException:
            step, self._step = self._step, None
            if step is not None:
                self._roll_back(step)
            raise
        step = self._step
        if step is None:
            return
        written = sorted(step.layers_written)
        self._settle()
        expected = self.num_hidden_layers if self.latent_layers is None else len(set(self.latent_layers))
        if expected is not None and len(written) < expected:
            raise ValueError(
                f"num_hidden_layers: this LatentPagedCache was built for {expected} layers but the "
                f"forward pass wrote {len(written)} (layers {written}); the step was rolled back. Build the cache for "
                f"the layers that run: LatentPagedCache(model.config) with config.num_hidden_layers equal to the "
                f"model's decoder layers (after pruning), or LatentPagedCache(num_hidden_layers=...)")

    def _begin_step(self, batch: int, query_length: int, token_mask: torch.Tensor | None) -> _Step:
        self._settle()
        self._start_batch(batch)
        if batch != len(self._lengths):
            raise ValueError(f"hidden_states: batch size {batch} differs from the {len(self._lengths)} sequences "
                             f"in this LatentPagedCache; use a new cache (or reset()) for a new batch")

        host_mask = None
        left_padded = True
        if token_mask is not None:
            read = (query_length > 1 or self._logical_length == 0 or token_mask.device.type == "cpu"
                    or _value_checks_requested(None))
            if read:
                host_mask = token_mask.to("cpu", torch.bool)
                counts = host_mask.sum(dim=1).tolist()
                # Real tokens at the end of each row (left padding) keep the kernel's causal rule exact.
                first_real = query_length - torch.tensor(counts)
                columns = torch.arange(query_length)
                left_padded = bool(torch.equal(host_mask, columns[None, :] >= first_real[:, None]))
                if self._logical_length > 0 and query_length == 1 and not all(counts):
                    raise ValueError("attention_mask: a padding token after the first forward pass of a batch is "
                                     "not supported by LatentPagedCache (generate() never passes one)")
                if all(count == query_length for count in counts):
                    token_mask = None
            else:
                counts = [query_length] * batch
                token_mask = None
        else:
            counts = [query_length] * batch

        lengths_before = list(self._lengths)
        if query_length == 1 and self._logical_length > 0 and self._window is None and not all(lengths_before):
            # A prompt chunk may be all padding for a row (chunked or blocked prefill), a whole prompt may not:
            # its first generated token would attend to nothing but itself, and eager's to its padding.
            raise ValueError(f"attention_mask: row {lengths_before.index(0)} had no real token before this step (its "
                             f"prompt's mask was all zeros); every sequence needs at least one")
        lengths_after = [length + count for length, count in zip(lengths_before, counts)]
        allocate_to = lengths_after
        if self.reserve_tokens is not None and self._logical_length == 0:
            # A new batch: every sequence gets its pages for reserve_tokens now (decode then never allocates).
            self._reserved_pages = pages_for(max([self.reserve_tokens] + lengths_after))
            allocate_to = [self._reserved_pages * PAGE_SIZE] * batch
        self._ensure_free(self._pages_needed(allocate_to))  # raises before anything changes
        self.state_version = next(_STATE_VERSIONS)
        appended = []  # (seq, first new column): the host table is patched, not rebuilt
        for seq, length in enumerate(allocate_to):
            before = len(self._pages[seq])
            if before * PAGE_SIZE < length:
                self._allocate_to(seq, length)
                appended.append((seq, before))
        if appended:
            self._append_to_table(appended)
        self._step_counter += 1
        step = _Step(self._step_counter, query_length, lengths_before, lengths_after, self._logical_length,
                     token_mask if host_mask is None else host_mask, left_padded)
        if self._last_step is not None and self._last_step.lengths_after == lengths_before:
            step.previous = self._last_step
            self._last_step.previous = None  # keep one step back only
        self._lengths = lengths_after
        self._logical_length += query_length
        self._step = step
        return step

    def _start_batch(self, batch: int):
        """An empty cache takes any batch size (also after a first step that raised)."""
        if self._logical_length == 0 and self._row_logical is None and len(self._lengths) != batch:
            for pages in self._pages:
                self._free.extend(reversed(pages))
            self._lengths = [0] * batch
            self._pages = [[] for _ in range(batch)]
            self._rebuild_table()

    def begin_batch(self, batch: int):
        """Makes an empty cache hold `batch` empty sequences (before a prefill that runs in row blocks)."""
        if self._window is not None:
            raise RuntimeError("begin_batch: called inside rows()")
        if not _is_positive_int(batch):
            raise ValueError(f"batch: expected a positive int, got {batch!r}")
        self._settle()
        self._start_batch(batch)
        if batch != len(self._lengths):
            raise ValueError(f"batch: {batch} differs from the {len(self._lengths)} sequences in this "
                             f"LatentPagedCache; use a new cache (or reset()) for a new batch")

    @contextlib.contextmanager
    def all_or_nothing(self):
        """Within: forward passes that all stay, or are all undone if one raises (the blocks of a budgeted prefill:
        a block that does not fit must not leave its prompt half-written). The batch too, if it began within."""
        if self._window is not None:
            raise RuntimeError("all_or_nothing: called inside rows()")
        self._settle()
        lengths, logical, row_logical = list(self._lengths), self._logical_length, self._row_logical
        reserved = self._reserved_pages
        try:
            yield self
        except BaseException:
            self._settle()
            if len(self._pages) != len(lengths):  # the batch began within: give every page back
                for pages in self._pages:
                    self._free.extend(reversed(pages))
                self._pages = [[] for _ in lengths]
            self._lengths, self._logical_length, self._row_logical = lengths, logical, row_logical
            self._reserved_pages = reserved
            self._release_unused_pages()
            self._rebuild_table()
            self._last_step = None
            self.state_version = next(_STATE_VERSIONS)
            raise

    @contextlib.contextmanager
    def rows(self, start: int, stop: int):
        """Within: the cache is sequences start..stop-1 alone, with their own padded length, for a forward pass
        over some rows of the batch (a block of a budgeted prefill, transformers_integration.prefill_blocks).
        Pages, pools and the free list stay shared; the block table is rebuilt on the way out."""
        self._settle()
        if self._window is not None:
            raise RuntimeError("rows: already inside rows()")
        batch = len(self._lengths)
        if not 0 <= start < stop <= batch:
            raise ValueError(f"rows: expected 0 <= start < stop <= {batch}, got {start}, {stop}")
        row_logical = self._row_logical or [self._logical_length] * batch
        self._window = (start, stop, self._lengths, self._pages, self._logical_length)
        self._lengths = self._lengths[start:stop]
        self._pages = self._pages[start:stop]  # the same page lists: allocation inside appends to them
        self._logical_length = row_logical[start]
        self._row_logical = None
        self._last_step = None
        self._rebuild_table()
        try:
            yield self
        finally:
            self._settle()
            window_lengths, window_logical = self._lengths, self._logical_length
            start, stop, self._lengths, self._pages, _ = self._window
            self._window = None
            self._lengths[start:stop] = window_lengths
            row_logical[start:stop] = [window_logical] * (stop - start)
            self._logical_length = max(row_logical)
            self._row_logical = None if len(set(row_logical)) == 1 else row_logical
            self._last_step = None
            self._rebuild_table()
            self.state_version = next(_STATE_VERSIONS)

    def _device_step(self, step: _Step, device: torch.device) -> _DeviceStep:
        state = step.devices.get(device)
        if state is not None:
            return state
        state = _DeviceStep()
        state.block_table = self._device_table(device)
        previous = step.previous.devices.get(device) if step.previous is not None else None
        if previous is not None and step.token_mask is None:
            # A plain continuation of the previous step: the lengths follow on the device, no copy.
            state.seqlens_before = previous.seqlens
            state.seqlens = previous.seqlens + step.query_length
        else:
            state.seqlens_before = _to_device(torch.tensor(step.lengths_before, dtype=torch.int32), device)
            state.seqlens = _to_device(torch.tensor(step.lengths_after, dtype=torch.int32), device)
        s = step.query_length
        if step.token_mask is None:
            rank = torch.arange(s, device=device, dtype=torch.int32)[None, :].expand(len(step.lengths_before), s)
            real = None
        else:
            real = step.token_mask.to(device, non_blocking=True)
            rank = real.to(torch.int32).cumsum(dim=1, dtype=torch.int32) - 1
        position = state.seqlens_before[:, None] + rank.clamp(min=0)
        page_col = (position // PAGE_SIZE).clamp(max=state.block_table.shape[1] - 1).to(torch.long)
        slots = state.block_table.gather(1, page_col).to(torch.long) * PAGE_SIZE + (position % PAGE_SIZE).to(torch.long)
        if real is not None:
            slots = torch.where(real, slots, torch.full_like(slots, SCRATCH_PAGE * PAGE_SIZE))
        state.write_slots = slots.reshape(-1)
        state.token_mask = real
        step.devices[device] = state
        return state

    def step_for(self, layer_idx: int, batch: int, query_length: int, token_mask: torch.Tensor | None) -> _Step:
        """The step (forward pass) this layer's tokens belong to: a layer that already wrote in the current
        step opens the next one (lengths, page allocation: once per forward pass, not per layer)."""
        if self._graph_step is not None:
            return self._graph_step.step
        step = self._step
        if step is None or layer_idx in step.layers_written:
            return self._begin_step(batch, query_length, token_mask)
        if step.query_length != query_length or len(step.lengths_before) != batch:
            raise ValueError(f"hidden_states: layer {layer_idx} got batch {batch} with {query_length} tokens within a "
                             f"forward pass whose first layer had batch {len(step.lengths_before)} with "
                             f"{step.query_length} tokens")
        return step

    def write(self, layer_idx: int, latent: torch.Tensor, token_mask: torch.Tensor | None = None):
        """Stores this layer's latent rows of the current forward pass.

        latent [b, s, latent_dim]; token_mask bool [b, s] (False: padding, not stored) or None.
        The first layer of a forward pass opens a step (lengths, page allocation); later layers reuse it.
        Returns (pool [num_pages, 64, 1, latent_dim], step, device_step).
        """
        if latent.dim() != 3:
            raise ValueError(f"latent: expected [batch, seq, latent_dim], got shape {tuple(latent.shape)}")
        batch, s, dim = latent.shape
        if self.latent_dim is None:
            if self.is_fp8:
                fp8_latent.check_latent_shape(dim - DEFAULT_ROPE_DIM, DEFAULT_ROPE_DIM)
                self.kv_lora_rank = dim - DEFAULT_ROPE_DIM
            self.latent_dim = dim
        if dim != self.latent_dim:
            raise ValueError(f"latent: expected latent_dim {self.latent_dim}, got {dim}")
        if self.is_fp8 and latent.dtype not in FP8_MODEL_DTYPES:
            raise ValueError(f"kv_cache_dtype: an FP8 cache serves bfloat16 models (float32 too, on the reference "
                             f"path): the FP8 kernels take bfloat16 queries; this layer's latent is {latent.dtype}. "
                             f"Load the model in bfloat16, or use kv_cache_dtype='auto'")
        if self.num_hidden_layers is not None and not 0 <= layer_idx < self.num_hidden_layers:
            raise ValueError(f"layer_idx: expected 0 <= layer_idx < {self.num_hidden_layers}, got {layer_idx}")
        if self.latent_layers is not None and layer_idx not in self.latent_layers:
            raise ValueError(f"layer_idx: layer {layer_idx} stores no latent in this cache (its latent layers are "
                             f"{list(self.latent_layers)})")
        if self._graph_step is not None:
            return self._graph_write(layer_idx, latent)
        step = self.step_for(layer_idx, batch, s, token_mask)

        pool = self._pools.get(layer_idx)
        if pool is None:
            pool = torch.zeros((self._capacity, PAGE_SIZE, 1, self._row_width(dim)), dtype=self._pool_dtype(latent),
                               device=latent.device)
            self._pools[layer_idx] = pool
            self._pools_changed()
        else:
            if pool.device != latent.device or pool.dtype != self._pool_dtype(latent):
                raise ValueError(f"latent: layer {layer_idx}'s pool is {pool.dtype} on {pool.device}, got "
                                 f"{latent.dtype} on {latent.device}")
            pool = self._grown_pool(layer_idx)
        state = self._device_step(step, latent.device)
        self._write_rows(pool, state.write_slots, latent)
        step.layers_written.add(layer_idx)
        return pool, step, state

    def _pool_dtype(self, latent: torch.Tensor) -> torch.dtype:
        return torch.uint8 if self.is_fp8 else latent.dtype

    def _row_width(self, dim: int) -> int:
        return fp8_latent.token_bytes(self.kv_lora_rank, dim - self.kv_lora_rank) if self.is_fp8 else dim

    def _write_rows(self, pool: torch.Tensor, slots: torch.Tensor, latent: torch.Tensor) -> None:
        """Stores latent [b, s, dim] in the pool's rows `slots`. An FP8 cache on the sm_90 kernel's device with the
        512 + 64 latent takes one fused kernel (quantize and scatter: fp8_latent.quantize and index_copy_ are a dozen
        small kernels per layer and decode step, more time than the FP8 attention saves); the same bytes either way."""
        rows = latent.reshape(-1, latent.shape[-1])
        if self.is_fp8 and self._fused_fp8_write(rows):
            _ops.fp8_latent_write(pool.view(-1, pool.shape[-1]), slots, rows.contiguous())
        else:
            pool.view(-1, pool.shape[-1]).index_copy_(0, slots, self._stored_rows(latent))

    def _fused_fp8_write(self, rows: torch.Tensor) -> bool:
        return (rows.is_cuda and rows.shape[-1] == FUSED_FP8_ROW and self.kv_lora_rank == FUSED_FP8_RANK
                and _ops.fp8_write_kernel_available()
                and dispatch.choice_for(rows.device, 1, True).name == dispatch.KERNEL)

    def _stored_rows(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [b, s, dim] as the pool's rows [b * s, row width] (quantized on the device in FP8)."""
        rows = latent.reshape(-1, latent.shape[-1])
        return fp8_latent.quantize(rows, self.kv_lora_rank) if self.is_fp8 else rows

    def stored_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """The latent as a reader of this cache sees it once stored: itself, or its FP8 round trip (the dense
        prefill attends to this, so that its keys are the ones later steps read from the pages)."""
        return fp8_latent.round_trip(latent, self.kv_lora_rank) if self.is_fp8 else latent

    # ------------------------------------------------------------------------- CUDA-graph decode steps
    def _graph_write(self, layer_idx: int, latent: torch.Tensor):
        """The write of a captured (or replayed) decode step: slots come from the graph's device tensors,
        the host bookkeeping is left to graph_step_done()."""
        pool = self._pools.get(layer_idx)
        if pool is None or pool.device != latent.device or pool.dtype != self._pool_dtype(latent):
            raise RuntimeError(f"latent: a CUDA-graph decode step reached layer {layer_idx}, whose pool is not in "
                               f"place ({None if pool is None else (pool.dtype, pool.device)}); the graph must be "
                               f"captured after the eager prefill has written every layer")
        state = self._graph_step.state
        self._write_rows(pool, state.write_slots, latent)
        return pool, self._graph_step.step, state

    @contextlib.contextmanager
    def graph_step(self, block_table: torch.Tensor, seqlens: torch.Tensor, advance: torch.Tensor,
                   query_length: int):
        """Within: every layer's write and attention use the graph's device tensors (block_table int32 [B, W],
        seqlens int32 [B], advance int32 [B]); yields the step's device state (its .seqlens are the lengths
        after the step, which the caller stores back into seqlens once the forward pass is done)."""
        self._graph_step = _GraphStep(block_table, seqlens, advance, query_length)
        try:
            yield self._graph_step.state
        finally:
            self._graph_step = None

    def graph_ready(self, batch: int, query_length: int) -> bool:
        """Whether a decode step of query_length tokens per sequence can replay a graph: a started batch of
        this size whose sequences all stay within their reserved pages, pools in place."""
        self._settle()
        return (self._reserved_pages > 0 and len(self._lengths) == batch and self._logical_length > 0
                and self._row_logical is None and self._window is None
                and max(self._lengths) + query_length <= self._reserved_pages * PAGE_SIZE
                and all(len(pages) >= self._reserved_pages for pages in self._pages)
                and bool(self._pools) and all(pool.shape[0] >= self._capacity for pool in self._pools.values()))

    def graph_view(self) -> tuple[list[int], torch.Tensor, int]:
        """(lengths, host block table [b, reserved pages], reserved pages): what a graph's device tensors copy."""
        self._settle()
        width = self._reserved_pages
        table = self._table[:, :width]
        if table.shape[1] < width:  # a table narrower than the reservation (not built by _begin_step)
            table = torch.nn.functional.pad(table, (0, width - table.shape[1]), value=SCRATCH_PAGE)
        return list(self._lengths), table, width

    def graph_step_done(self, query_length: int):
        """Host mirror of a replayed decode step: every sequence gained query_length real tokens (the graph
        advanced the device lengths itself), without reading the device."""
        self._lengths = [length + query_length for length in self._lengths]
        self._logical_length += query_length
        self._last_step = None

    def gather(self, layer_idx: int, state: _DeviceStep, max_length: int, rows: slice | None = None,
               dtype: torch.dtype | None = None) -> torch.Tensor:
        """The stored latent rows of every sequence (or of `rows`), [b, max_length, latent_dim]; rows past a
        sequence's length hold scratch data (mask them with the lengths). An FP8 cache's rows come dequantized,
        in dtype (default float32)."""
        pool = self._pools[layer_idx]
        table = state.block_table if rows is None else state.block_table[rows]
        position = torch.arange(max_length, device=pool.device)
        page_col = (position // PAGE_SIZE).clamp(max=table.shape[1] - 1)
        slots = table[:, page_col].to(torch.long) * PAGE_SIZE + position % PAGE_SIZE
        stored = pool.view(-1, pool.shape[-1])[slots]
        if self.is_fp8:
            return fp8_latent.dequantize(stored, self.kv_lora_rank, dtype or torch.float32)
        return stored


def check_states_to_keep(recurrent_states_to_keep) -> None:
    if recurrent_states_to_keep is not None and not (
            isinstance(recurrent_states_to_keep, int) and not isinstance(recurrent_states_to_keep, bool)
            and recurrent_states_to_keep >= 0):
        raise ValueError(f"recurrent_states_to_keep: expected a non-negative int or None, got "
                         f"{recurrent_states_to_keep!r}")


def _host_indices(indices, name: str) -> list[int]:
    """Row indices as a list of ints; float or bool indices are refused (they would be truncated)."""
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"{name}: expected integer indices, got a {indices.dtype} tensor")
        if indices.dim() != 1:
            raise ValueError(f"{name}: expected a 1-D tensor of row indices, got shape {tuple(indices.shape)}")
        return indices.tolist()  # beam search only: one small device->host copy per step
    try:
        values = list(indices)
    except TypeError:
        raise TypeError(f"{name}: expected a 1-D tensor or a sequence of row indices, got "
                        f"{type(indices).__name__}") from None
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected integer indices, got {value!r}")
    return values


def cache_bytes_per_token_per_layer(latent_dim: int, dtype: torch.dtype, kv_cache_dtype: str = "auto",
                                    kv_lora_rank: int | None = None) -> int:
    """One token's latent row in one layer: latent_dim values of dtype, or the FP8 layout's bytes (656 for
    512 + 64; kv_lora_rank defaults to latent_dim - 64)."""
    if fp8_latent.kv_cache_dtype_or_default(kv_cache_dtype) == fp8_latent.FP8_E4M3:
        rank = latent_dim - DEFAULT_ROPE_DIM if kv_lora_rank is None else kv_lora_rank
        return fp8_latent.token_bytes(rank, latent_dim - rank)
    return latent_dim * torch.empty((), dtype=dtype).element_size()


def pages_for(num_tokens: int) -> int:
    return -(-num_tokens // PAGE_SIZE)
