"""One cache for models whose MLA layers alternate with linear-attention layers (Kimi-Linear, Bailing-hybrid).

generate() hands a model one cache object for all its layers. HybridLatentCache is a LatentPagedCache for
the MLA layers (their latents in pages, under their own layer indices) that also holds, in `self.layers`
at the linear-attention layers' indices, the per-layer state objects the installed Transformers makes for
them (conv and recurrent states). The linear layers use the Cache methods they always use
(has_previous_state, update_conv_state, get_recurrent_state, ...: inherited from Transformers' Cache, which
read `self.layers`), whatever the release; the sequence-level operations (beam reorder, crop, reset, past
recording for assisted decoding) act on both parts.

A forward pass that raises part-way is rolled back in the pages (LatentPagedCache), not in the linear
layers' states: their update is in place, as in Transformers' own caches.
"""
from __future__ import annotations

import torch

from hf_flashmla.latent_cache import LatentPagedCache, check_states_to_keep

MLA_LAYER_TYPE = "full_attention"


class PagedLatentLayer:
    """Stands at an MLA layer's index in HybridLatentCache.layers: that layer's tokens live in the pages."""
    is_sliding = False
    is_compileable = False
    is_croppable = True
    supports_early_init = False
    is_initialized = True

    def __repr__(self):
        return "PagedLatentLayer"


def _text_config(config):
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def mla_layers(config) -> list[int]:
    """The indices of the model's MLA layers: those config.layer_types calls full attention, or all layers."""
    text_config = _text_config(config)
    layer_types = getattr(text_config, "layer_types", None)
    if not layer_types:
        return list(range(text_config.num_hidden_layers))
    return [index for index, kind in enumerate(layer_types) if kind == MLA_LAYER_TYPE]


def has_state_layers(config) -> bool:
    """Whether the model has layers besides its MLA layers (config.layer_types)."""
    return any(kind != MLA_LAYER_TYPE for kind in getattr(_text_config(config), "layer_types", None) or ())


_TransformersCache = LatentPagedCache.__mro__[1]  # transformers' Cache (LatentPagedCache's base)


class HybridLatentCache(LatentPagedCache):
    """LatentPagedCache for the MLA layers + Transformers' own state objects for the linear-attention layers.

    config: the model config; its layer_types say which layers are MLA ("full_attention": pages) and which
    are linear attention. max_pages / initial_pages / kv_cache_dtype: as LatentPagedCache's, for the MLA layers' pools.
    """

    def __init__(self, config, *, max_pages: int | None = None, initial_pages: int = 64, kv_cache_dtype: str = "auto"):
        from transformers.cache_utils import DynamicCache, LinearAttentionCacheLayerMixin

        text_config = _text_config(config)
        layer_types = list(getattr(text_config, "layer_types", None) or ())
        latent_layers = mla_layers(config) if layer_types else []
        if not latent_layers:
            raise ValueError(f"config: HybridLatentCache needs config.layer_types with '{MLA_LAYER_TYPE}' (MLA) "
                             f"layers; {type(config).__name__} has layer_types={layer_types or None}")
        if len(layer_types) != text_config.num_hidden_layers:
            raise ValueError(f"config: layer_types has {len(layer_types)} entries for num_hidden_layers = "
                             f"{text_config.num_hidden_layers}; expected one per layer")
        super().__init__(config, num_hidden_layers=len(layer_types), max_pages=max_pages, initial_pages=initial_pages,
                         latent_layers=latent_layers, kv_cache_dtype=kv_cache_dtype)
        try:
            own_layers = DynamicCache(config=config).layers  # this release's state objects, one per layer
        except (AttributeError, ValueError, KeyError) as error:  # e.g. a sliding layer without sliding_window
            raise ValueError(f"config: Transformers cannot make the states of layer_types={layer_types} "
                             f"({type(error).__name__}: {error})") from None
        layers = []
        for index, kind in enumerate(layer_types):
            if kind == MLA_LAYER_TYPE:
                layers.append(PagedLatentLayer())
            elif isinstance(own_layers[index], LinearAttentionCacheLayerMixin):
                layers.append(own_layers[index])
            else:
                raise ValueError(f"config: layer {index} is '{kind}', which is neither MLA nor linear attention; "
                                 f"HybridLatentCache cannot hold it")
        self.layers = layers

    def _state_layers(self):
        return [layer for layer in self.layers if not isinstance(layer, PagedLatentLayer)]

    def __repr__(self):
        return (f"HybridLatentCache(batch={len(self._lengths)}, lengths={self._lengths}, mla_layers="
                f"{list(self.latent_layers)}, state_layers={len(self._state_layers())}, pool_pages={self._capacity})")

    # --------------------------------------------------------- sequence-level operations: both parts
    def reset(self):
        super().reset()
        for layer in self._state_layers():
            layer.reset()

    def reorder_cache(self, beam_idx: torch.LongTensor):
        super().reorder_cache(beam_idx)
        self._select_states(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor):
        super().batch_select_indices(indices)
        self._select_states(indices)

    def batch_repeat_interleave(self, repeats: int):
        batch = len(self._lengths)
        super().batch_repeat_interleave(repeats)
        self._select_states(torch.arange(batch).repeat_interleave(repeats))

    def _select_states(self, indices):
        indices = torch.as_tensor(indices, dtype=torch.long)
        for layer in self._state_layers():
            layer.reorder_cache(indices)  # row i takes row indices[i]'s states

    def crop(self, tokens_to_remove: int) -> None:
        remove = self._positions_to_remove(tokens_to_remove)
        if remove == 0:
            return
        # The linear layers can roll back only states they recorded: refused before the pages change.
        if any(not getattr(layer, "record_past", True) for layer in self._state_layers()):
            raise ValueError(f"tokens_to_remove: removing {remove} positions needs the linear-attention layers' past "
                             f"states; call activate_past_recording() before the steps to be cropped")
        super().crop(tokens_to_remove)
        for layer in self._state_layers():
            layer.crop(-remove)  # linear-attention layers take only "remove n" (a negative count)

    def activate_past_recording(self, recurrent_states_to_keep: int | None = None):
        """Assisted decoding: the linear layers keep their past states so that crop() can roll them back."""
        check_states_to_keep(recurrent_states_to_keep)
        kwargs = {} if recurrent_states_to_keep is None else {"recurrent_states_to_keep": recurrent_states_to_keep}
        for layer in self._state_layers():
            layer.activate_past_recording(**kwargs)

    def is_recording_past(self, layer_idx: int) -> bool:
        self._check_layer_idx(layer_idx)
        return getattr(self.layers[layer_idx], "record_past", False)

    @property
    def is_croppable(self) -> bool:
        return all(layer.is_croppable for layer in self._state_layers())

    @property
    def is_linear(self) -> list[bool]:
        return [not isinstance(layer, PagedLatentLayer) for layer in self.layers]


# The linear-attention layers' state API is Transformers' own (Cache's methods index self.layers, which holds this
# release's state objects at their layer indices), not LatentPagedCache's refusals; where a release's Cache has no
# such method, its models do not call it either.
for _name in ("has_previous_state", "get_conv_state", "update_conv_state", "get_recurrent_state",
              "update_recurrent_state", "increase_count", "get_recurrent_states_to_keep"):
    if hasattr(_TransformersCache, _name):
        setattr(HybridLatentCache, _name, getattr(_TransformersCache, _name))


def latent_cache_for(config, **kwargs) -> LatentPagedCache:
    """The cache a flash_mla model generates with: HybridLatentCache when the model has layers besides its MLA
    layers (config.layer_types), else LatentPagedCache. kwargs: max_pages, initial_pages, kv_cache_dtype."""
    if has_state_layers(config):
        return HybridLatentCache(config, **kwargs)
    return LatentPagedCache(config, **kwargs)
