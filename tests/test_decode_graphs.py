"""CUDA-graph decode steps (decode_graphs): the runner's bookkeeping on the CPU, where each "replay" runs the
captured step again through the same bucket tensors (EMULATE_ON_CPU), so that tokens can be compared with
eager. The real capture runs in tests/test_decode_graphs_gpu.py."""
import pytest
import torch

from hf_flashmla import LatentPagedCache
from hf_flashmla.checkpoint import TINY
from hf_flashmla.transformers_integration import cache_kwarg, call_counts, decode_graphs, reset_call_counts

from test_integration_generate import prompts, tiny_model

CACHE = cache_kwarg()


@pytest.fixture(autouse=True)
def emulated_graphs(monkeypatch):
    monkeypatch.setattr(decode_graphs, "EMULATE_ON_CPU", True)
    yield
    for name in ("v3", "v2"):
        decode_graphs.release(tiny_model(name))


def run(model, implementation, ids, mask=None, **kwargs):
    model.set_attn_implementation(implementation)
    kwargs.setdefault("max_new_tokens", 10)
    kwargs.setdefault("do_sample", False)
    return model.generate(ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True, **kwargs)


def runner_of(model):
    return model.__dict__["_hf_flashmla_decode_runner"]


def assert_graphs_match_eager(model, ids, mask=None, **kwargs):
    eager = run(model, "eager", ids, mask, **kwargs)
    reset_call_counts()
    flash = run(model, "flash_mla", ids, mask, **kwargs)
    assert torch.equal(flash.sequences, eager.sequences)
    if not kwargs.get("num_beams"):
        assert torch.allclose(torch.stack(flash.scores), torch.stack(eager.scores), rtol=1e-4, atol=1e-4)
    return flash


@pytest.mark.parametrize("name", ["v3", "v2"])
def test_greedy_padded_batch_replays_graphs_and_matches_eager(name):
    model = tiny_model(name)
    ids, mask = prompts(batch=3, pads=(0, 7, 13))  # batch 3 runs in the bucket of 4: one padding row
    out = assert_graphs_match_eager(model, ids, mask, max_new_tokens=12)
    runner = runner_of(model)
    assert runner.replays == 11  # every step after the prefill
    cache = out.get(CACHE)
    assert cache.sequence_lengths == [20 + 11, 13 + 11, 7 + 11]
    arena = cache._arena
    assert list(arena.buckets) == [(4, 1)]
    # A replay runs no Python, yet counts what its captured forward did: one paged call per layer per step.
    layers = model.config.num_hidden_layers
    assert call_counts["graph_steps"] == 11 and call_counts["paged_reference"] == 11 * layers
    assert call_counts["graph_paged_kernel"] == 0  # the CPU's reference path, no compiled kernel


def test_a_step_that_cannot_be_captured_runs_eagerly_with_a_warning(monkeypatch):
    model = tiny_model("v3")
    ids, mask = prompts(batch=2, pads=(0, 5))
    expected = run(model, "eager", ids, mask, max_new_tokens=6).sequences

    class Uncapturable:
        def __init__(self, step, cache, memory_pool):
            raise decode_graphs.GraphCaptureError("the decode step waits on the device: nonzero")

    monkeypatch.setattr(decode_graphs, "_EmulatedGraph", Uncapturable)
    decode_graphs.release(model)  # no bucket captured earlier: this generate() must try
    runner = runner_of(model) if "_hf_flashmla_decode_runner" in model.__dict__ else None
    replays = runner.replays if runner is not None else 0
    try:
        with pytest.warns(UserWarning, match="decode steps run eagerly, not as CUDA graphs"):
            out = run(model, "flash_mla", ids, mask, max_new_tokens=6)
        runner = runner_of(model)
        assert torch.equal(out.sequences, expected)
        assert runner.replays == replays and "nonzero" in runner.uncapturable
        again = run(model, "flash_mla", ids, mask, max_new_tokens=6)  # no second attempt
        assert torch.equal(again.sequences, expected) and runner.replays == replays
    finally:
        if runner is not None:
            runner.uncapturable = None


def test_second_generate_reuses_or_recaptures_and_never_reads_stale_tables():
    model = tiny_model("v3")
    ids, mask = prompts(batch=3, pads=(0, 7, 13))
    first = run(model, "flash_mla", ids, mask, max_new_tokens=6)
    arena = first.get(CACHE)._arena
    del first  # the cache dies: the next generate() takes the arena over
    captures = arena.captures
    # Other lengths, same bucket: replays the captured graph with the new cache's block table and lengths.
    ids2, mask2 = prompts(batch=4, length=33, pads=(5, 0, 30, 2), seed=4)
    assert_graphs_match_eager(model, ids2, mask2, max_new_tokens=9)
    assert decode_graphs.arena_for(model, torch.device("cpu")) is arena
    assert arena.captures == captures
    # Another batch size: a new bucket is captured.
    ids3, mask3 = prompts(batch=1, length=18, pads=(0,), seed=5)
    assert_graphs_match_eager(model, ids3, mask3, max_new_tokens=7)
    assert arena.captures == captures + 1


def test_a_kept_cache_keeps_its_pools():
    model = tiny_model("v3")
    ids, mask = prompts(batch=2, pads=(0, 3))
    first = run(model, "flash_mla", ids, mask, max_new_tokens=5)
    kept = first.get(CACHE)
    lengths = kept.sequence_lengths
    pools = {layer: kept.pool(layer).clone() for layer in range(model.config.num_hidden_layers)}
    run(model, "flash_mla", *prompts(batch=2, pads=(1, 0), seed=9), max_new_tokens=5)
    assert kept.sequence_lengths == lengths
    for layer, pool in pools.items():
        assert torch.equal(kept.pool(layer), pool)


def test_sampling_with_a_seed_matches_eager():
    model = tiny_model("v3")
    ids, mask = prompts()
    outs = {}
    for implementation in ("eager", "flash_mla"):
        torch.manual_seed(11)
        outs[implementation] = run(model, implementation, ids, mask, do_sample=True, top_k=20,
                                   max_new_tokens=10).sequences
    assert torch.equal(outs["flash_mla"], outs["eager"])
    assert runner_of(model).replays > 0


def test_beam_search_reorders_within_reserved_pages():
    model = tiny_model("v3")
    ids, mask = prompts(batch=2, pads=(0, 6))
    out = assert_graphs_match_eager(model, ids, mask, num_beams=3, max_new_tokens=8)
    cache = out.get(CACHE)
    # Every row keeps the pages it reserved at the first step: reorders copy, never take fresh pages.
    assert cache._reserved_pages == 1
    assert cache.num_pages_in_use == 6


def test_disable_compile_keeps_every_step_eager():
    model = tiny_model("v3")
    ids, mask = prompts(batch=2, pads=(0, 4))
    out = run(model, "flash_mla", ids, mask, max_new_tokens=5, disable_compile=True)
    cache = out.get(CACHE)
    assert cache._arena is None and cache.reserve_tokens is None


def test_user_cache_stays_eager():
    model = tiny_model("v3")
    ids, mask = prompts(batch=2, pads=(0, 4))
    eager = run(model, "eager", ids, mask, max_new_tokens=5)
    reset_call_counts()
    out = run(model, "flash_mla", ids, mask, max_new_tokens=5, **{CACHE: LatentPagedCache(model.config)})
    assert torch.equal(out.sequences, eager.sequences)
    assert call_counts["paged_reference"] > 0


def test_a_step_past_the_reservation_runs_eagerly():
    model = tiny_model("v3")
    model.set_attn_implementation("flash_mla")
    ids, mask = prompts(batch=2, length=10, pads=(0, 2))
    arena = decode_graphs.arena_for(model, torch.device("cpu"))
    cache = LatentPagedCache(model.config, reserve_tokens=11, graph_arena=arena)
    arena.claim(cache)
    runner = decode_graphs.DecodeGraphRunner(model)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, **{CACHE: cache})
        assert cache.graph_ready(2, 1)
        token = torch.tensor([[5], [6]])
        runner(input_ids=token, position_ids=torch.tensor([[10], [8]]), **{CACHE: cache})
        assert runner.replays == 1 and cache.sequence_lengths == [11, 9]
        # 64 reserved tokens per row (one page): the step that would pass them goes eager and allocates.
        cache.crop(-0)
        assert cache.graph_ready(2, 1)
        long_ids = torch.randint(3, TINY["vocab_size"], (2, 60))
        model(input_ids=long_ids, **{CACHE: cache})
        assert not cache.graph_ready(2, 1)
        runner(input_ids=token, position_ids=torch.tensor([[71], [69]]), **{CACHE: cache})
        assert runner.replays == 1 and runner.eager_calls == 1
        assert cache.sequence_lengths == [72, 70]


def test_a_deep_copy_of_the_model_gets_its_own_arena_and_runner():
    import copy

    model = tiny_model("v3")
    ids, mask = prompts(batch=2, pads=(0, 4))
    run(model, "flash_mla", ids, mask, max_new_tokens=4)
    copied = copy.deepcopy(model)
    assert copied.__dict__["_hf_flashmla_graph_arena"] is not model.__dict__["_hf_flashmla_graph_arena"]
    assert not copied.__dict__["_hf_flashmla_graph_arena"].pools
    assert runner_of(copied)._model() is copied
    first = run(model, "flash_mla", ids, mask, max_new_tokens=4).sequences
    assert torch.equal(run(copied, "flash_mla", ids, mask, max_new_tokens=4).sequences, first)
    decode_graphs.release(copied)
