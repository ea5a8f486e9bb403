"""LatentPagedCache on its own: the transformers Cache API of the installed release (CI runs this file on the
oldest and the newest supported release), batch reordering and selection, and refused input."""
import inspect

import pytest
import torch

from hf_flashmla import LatentCacheFullError, LatentPagedCache
from hf_flashmla.latent_cache import pages_for

transformers = pytest.importorskip("transformers")
from transformers.cache_utils import Cache  # noqa: E402

DIM = 8

# Methods that belong to layer kinds this cache does not hold: they must raise an error naming themselves.
REFUSED = {"update", "early_initialization", "has_previous_state", "get_conv_state", "update_conv_state",
           "get_recurrent_state", "update_recurrent_state", "increase_count", "update_indexer", "offload", "prefetch"}

# An argument for every parameter name the Cache API of 5.17 .. 5.25 uses; a new name fails the audit below.
ARGUMENTS = {
    "layer_idx": 0, "state_idx": 0, "only_non_sliding": True, "query_length": 1, "tokens_to_remove": 0,
    "repeats": 1, "recurrent_states_to_keep": 2, "batch_size": 2, "num_heads": 1, "head_dim": DIM,
    "dtype": torch.float32, "device": torch.device("cpu"),
    "key_states": torch.zeros(2, 1, 1, DIM), "value_states": torch.zeros(2, 1, 1, DIM),
    "conv_states": torch.zeros(2, 4, 3), "recurrent_states": torch.zeros(2, 4, 3),
    "indexer_key_states": torch.zeros(2, 1, DIM),
    "beam_idx": torch.tensor([0, 1]), "indices": torch.tensor([0, 1]),
}


def _public_api(cls) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_") or name in ("__len__", "__repr__")}


def filled_cache(lengths=(70, 60), layers=2, **kwargs):
    """A cache whose row r, token t, holds the value 1000 * r + t in every latent column (layer l adds l)."""
    cache = LatentPagedCache(num_hidden_layers=layers, latent_dim=DIM, **kwargs)
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    values = torch.zeros(len(lengths), width, DIM)
    for row, length in enumerate(lengths):
        mask[row, width - length:] = True  # left padding
        values[row, width - length:] = (1000 * row + torch.arange(length, dtype=torch.float32))[:, None]
    for layer in range(layers):
        cache.write(layer, values + layer, mask)
    return cache


def stored(cache, layer=0):
    """Each row's stored tokens, read through a one-token step that is then cropped away."""
    lengths = cache.sequence_lengths
    _, _, state = cache.write(layer, torch.zeros(len(lengths), 1, DIM))
    rows = cache.gather(layer, state, max(lengths) + 1)
    for other in range(cache.num_hidden_layers):
        if other != layer:
            cache.write(other, torch.zeros(len(lengths), 1, DIM))
    cache.crop(-1)
    assert cache.sequence_lengths == lengths
    return [rows[row, :length, 0] - layer for row, length in enumerate(lengths)]


def row_values(row, length):
    return 1000 * row + torch.arange(length, dtype=torch.float32)


# ------------------------------------------------------------------------------------------ Cache API
def test_every_cache_method_of_the_installed_release_is_defined_here():
    """Inherited methods index self.layers, which this cache leaves empty: each one must be overridden."""
    assert sorted(_public_api(Cache) - set(vars(LatentPagedCache))) == []


@pytest.mark.parametrize("name", sorted(_public_api(Cache)))
def test_every_cache_method_works_or_names_what_is_unsupported(name):
    cache = filled_cache()
    attribute = inspect.getattr_static(Cache, name)
    if isinstance(attribute, property):
        getattr(cache, name)
        return
    method = getattr(cache, name)
    parameters = [p for p in inspect.signature(method).parameters.values()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    arguments = {p.name: ARGUMENTS[p.name] for p in parameters if p.default is p.empty or p.name in ARGUMENTS}
    if name in REFUSED:
        with pytest.raises((ValueError, NotImplementedError), match=f"^{name}: "):
            method(**arguments)
    else:
        method(**arguments)
        # The arguments above ask for no change (crop(0), identity orders, repeats=1), except reset's.
        assert cache.sequence_lengths == ([] if name == "reset" else [70, 60])


def test_inherited_layer_queries_of_the_old_and_new_api():
    cache = filled_cache()
    assert len(cache) == 2 and cache.batch_size == 2 and cache.get_seq_length() == 70
    assert cache.get_max_length() == -1 and cache.get_max_cache_shape() == -1 and cache.max_cache_len == -1
    assert cache.max_batch_size == 2
    assert cache.is_sliding == cache.is_linear == cache.is_dummy == [False, False]
    assert cache.is_croppable and not cache.is_compileable and cache.is_initialized
    assert cache.get_mask_sizes(3, 0) == (73, 0) and cache.get_query_offset(1) == 70


def test_past_recording_keywords_are_accepted_and_checked():
    cache = filled_cache()
    cache.activate_past_recording()
    cache.activate_past_recording(recurrent_states_to_keep=4)  # what 5.25's assisted decoding passes
    cache.activate_past_recording(recurrent_states_to_keep=None)
    # No recurrent states: 0, as DynamicCache's attention layers answer; DeferredStopCheck takes max(1, this).
    assert cache.get_recurrent_states_to_keep() == 0 and cache.get_recurrent_states_to_keep(1) == 0
    assert cache.is_recording_past(0) is False
    # Recording or not, crop undoes any number of steps: every token is kept.
    cache.crop(-10)
    assert cache.sequence_lengths == [60, 50]
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="^recurrent_states_to_keep: "):
            cache.activate_past_recording(recurrent_states_to_keep=bad)
    with pytest.raises(TypeError):
        cache.activate_past_recording(states=2)
    with pytest.raises(ValueError, match="^layer_idx: "):
        cache.get_recurrent_states_to_keep(2)
    with pytest.raises(ValueError, match="^layer_idx: "):
        cache.is_recording_past(-1)
    with pytest.raises(TypeError, match="^layer_idx: "):
        cache.get_recurrent_states_to_keep(0.0)


def test_linear_attention_and_indexer_queries_raise_instead_of_indexing_layers():
    cache = filled_cache()
    for call in (lambda: cache.has_previous_state(), lambda: cache.has_previous_state(0),
                 lambda: cache.get_conv_state(1), lambda: cache.get_recurrent_state(0, 1),
                 lambda: cache.increase_count(0, 0)):
        with pytest.raises(ValueError, match="linear-attention"):
            call()
    with pytest.raises(ValueError, match="indexer"):
        cache.update_indexer(torch.zeros(2, 1, DIM), 0)
    for call in (lambda: cache.offload(0), lambda: cache.prefetch(1)):
        with pytest.raises(NotImplementedError, match="offload"):
            call()


# ---------------------------------------------------------------------------- selection and reorder
def test_batch_repeat_interleave_copies_each_row_in_place():
    cache = filled_cache(lengths=(70, 60))
    cache.batch_repeat_interleave(3)
    assert cache.sequence_lengths == [70, 70, 70, 60, 60, 60] and cache.batch_size == 6
    rows = stored(cache, layer=1)
    for row, (source, length) in enumerate([(0, 70)] * 3 + [(1, 60)] * 3):
        assert torch.equal(rows[row], row_values(source, length)), row
    cache.batch_repeat_interleave(1)
    assert cache.sequence_lengths == [70, 70, 70, 60, 60, 60]
    for bad in (0, -2, 1.0, True, "2"):
        with pytest.raises(ValueError, match="^repeats: "):
            cache.batch_repeat_interleave(bad)


def test_batch_select_indices_keeps_the_chosen_rows_in_order():
    cache = filled_cache(lengths=(70, 60, 5))
    cache.batch_select_indices(torch.tensor([2, 0]))
    assert cache.sequence_lengths == [5, 70] and cache.batch_size == 2
    rows = stored(cache)
    assert torch.equal(rows[0], row_values(2, 5)) and torch.equal(rows[1], row_values(0, 70))
    assert cache.num_pages_in_use == pages_for(5) + pages_for(70)  # the dropped row's pages went back
    cache.batch_select_indices([1])
    assert cache.sequence_lengths == [70] and torch.equal(stored(cache)[0], row_values(0, 70))


@pytest.mark.parametrize("method, name", [("reorder_cache", "beam_idx"), ("batch_select_indices", "indices")])
def test_float_bool_and_out_of_range_indices_are_refused(method, name):
    cache = filled_cache()
    for bad in (torch.tensor([1.0, 0.0]), torch.tensor([1.7, 0.2]), torch.tensor([True, False]), [1.0, 0], [True, 0]):
        with pytest.raises(TypeError, match=f"^{name}: expected integer indices"):
            getattr(cache, method)(bad)
    with pytest.raises(ValueError, match=f"^{name}: expected a 1-D"):
        getattr(cache, method)(torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match=f"^{name}: expected indices in"):
        getattr(cache, method)(torch.tensor([0, 2]))
    with pytest.raises(TypeError, match=f"^{name}: "):
        getattr(cache, method)(3)
    assert cache.sequence_lengths == [70, 60]
    rows = stored(cache)
    assert torch.equal(rows[0], row_values(0, 70)) and torch.equal(rows[1], row_values(1, 60))


def test_reorder_needs_no_spare_pages_for_rows_of_equal_length():
    """Beam search: every pool page is in use, and the beams swap and duplicate each other."""
    cache = filled_cache(lengths=(100, 100, 100), max_pages=6)
    assert cache.num_pages_in_use == 6
    for order in ([1, 1, 0], [2, 0, 1], [0, 0, 0], [1, 2, 2]):
        before = stored(cache)
        cache.reorder_cache(torch.tensor(order))
        after = stored(cache)
        for row, source in enumerate(order):
            assert torch.equal(after[row], before[source])
        assert cache.num_pages_in_use == 6


def test_a_permutation_moves_pages_without_copying():
    cache = filled_cache(lengths=(70, 60))
    pool = cache.pool(0).clone()
    cache.reorder_cache(torch.tensor([1, 0]))
    assert torch.equal(cache.pool(0), pool)  # only the page ownership changed
    rows = stored(cache)
    assert torch.equal(rows[0], row_values(1, 60)) and torch.equal(rows[1], row_values(0, 70))


def test_a_reorder_that_does_not_fit_changes_nothing():
    cache = filled_cache(lengths=(190, 10), max_pages=4)  # 3 pages + 1 page
    with pytest.raises(LatentCacheFullError, match="max_pages=4"):
        cache.reorder_cache(torch.tensor([0, 0]))  # a copy of 3 pages; dropping row 1 frees only 1
    assert cache.sequence_lengths == [190, 10] and cache.num_pages_in_use == 4
    rows = stored(cache)
    assert torch.equal(rows[0], row_values(0, 190)) and torch.equal(rows[1], row_values(1, 10))
    cache.reorder_cache(torch.tensor([1, 1]))  # 1 page to copy, 3 freed
    assert cache.sequence_lengths == [10, 10]
    assert all(torch.equal(row, row_values(1, 10)) for row in stored(cache))


@pytest.mark.parametrize("batch", [0, -1, 2.5, True, "2"])
def test_begin_batch_names_a_bad_batch(batch):
    cache = LatentPagedCache(num_hidden_layers=1, latent_dim=DIM)
    with pytest.raises(ValueError, match="^batch: expected a positive int"):
        cache.begin_batch(batch)
    cache.begin_batch(2)
    assert cache.sequence_lengths == [0, 0]


def test_a_reorder_into_reserved_pages_that_does_not_fit_changes_nothing():
    # A cache that reserves its pages copies each source into its destination's own pages; the extra pages of a
    # longer source are all taken, or none: a failure after some rows had grown left pages the block table did not
    # show, and those rows' next tokens went to the scratch page.
    cache = filled_cache(lengths=(64, 10, 10, 10), reserve_tokens=64, max_pages=15)  # one page reserved a row
    lengths = [64, 10, 10, 10]
    for layer in range(cache.num_hidden_layers):  # 136 more tokens a row: 4 pages in row 0, 3 in the others
        more = torch.stack([1000 * r + torch.arange(n, n + 136, dtype=torch.float32) for r, n in enumerate(lengths)])
        cache.write(layer, more[:, :, None].expand(4, 136, DIM) + layer)
    lengths = [n + 136 for n in lengths]
    table, pages, in_use = cache._table.clone(), [list(p) for p in cache._pages], cache.num_pages_in_use
    with pytest.raises(LatentCacheFullError, match="max_pages=15"):
        cache.reorder_cache(torch.tensor([0, 0, 0, 0]))  # one extra page for each of rows 1..3, one free
    assert cache.sequence_lengths == lengths and torch.equal(cache._table, table)
    assert cache._pages == pages and cache.num_pages_in_use == in_use
    rows = stored(cache)
    assert all(torch.equal(rows[r], row_values(r, n)) for r, n in enumerate(lengths))
    cache.reorder_cache(torch.tensor([0, 0, 2, 3]))  # one extra page fits
    rows = stored(cache)
    assert cache.sequence_lengths == [200, 200, 146, 146]
    assert torch.equal(rows[1], row_values(0, 200)) and torch.equal(rows[3], row_values(3, 146))


# --------------------------------------------------------------------------------- forward passes
def test_a_forward_pass_that_misses_layers_is_refused_and_rolled_back():
    cache = LatentPagedCache(num_hidden_layers=3, latent_dim=DIM)
    with cache.forward_pass():
        for layer in range(3):
            cache.write(layer, torch.ones(1, 4, DIM))
    assert cache.sequence_lengths == [4]
    with pytest.raises(ValueError, match="^num_hidden_layers: .*built for 3 layers but the forward pass wrote 2"):
        with cache.forward_pass():
            for layer in range(2):  # a model that runs 2 of the 3 layers the cache was built for
                cache.write(layer, torch.ones(1, 1, DIM))
    assert cache.sequence_lengths == [4] and cache.get_seq_length() == 4
    with cache.forward_pass():
        pass  # a forward pass that writes nothing (use_cache=False) is not a step


def test_an_exception_in_a_forward_pass_rolls_its_step_back_even_after_the_last_layer():
    cache = LatentPagedCache(num_hidden_layers=2, latent_dim=DIM)
    with cache.forward_pass():
        for layer in range(2):
            cache.write(layer, torch.ones(2, 70, DIM))
    pages = cache.num_pages_in_use
    with pytest.raises(RuntimeError, match="after the attention"):
        with cache.forward_pass():
            for layer in range(2):
                cache.write(layer, torch.ones(2, 60, DIM))
            raise RuntimeError("after the attention of the last layer")
    assert cache.sequence_lengths == [70, 70] and cache.num_pages_in_use == pages


def test_a_step_cut_short_by_an_exception_is_rolled_back_at_the_next_query():
    """Without forward_pass() (attention called on its own): a step that missed layers is rolled back."""
    cache = LatentPagedCache(num_hidden_layers=2, latent_dim=DIM)
    for layer in range(2):
        cache.write(layer, torch.ones(2, 3, DIM))
    cache.write(0, torch.ones(2, 1, DIM))  # layer 1 never comes: the forward pass raised in between
    assert cache.get_seq_length() == 3 and cache.sequence_lengths == [3, 3]
