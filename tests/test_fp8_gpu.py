"""generate() with the FP8 latent cache on a GPU (marker triton_gpu; on Hopper the sm_90 kernel reads it and the
fused write stores it, elsewhere the Triton kernel and the torch ops), bf16: real CUDA-graph captures of the FP8
pools, eager steps, and agreement with eager attention over the FP8 keys. Run on the GPU machine:
    python3 -m pytest -q -rs tests/test_fp8_gpu.py
"""
import pytest
import torch

import hf_flashmla
from hf_flashmla.checkpoint import TINY, make_config, random_model
from hf_flashmla.generation_check import first_divergences
from hf_flashmla.testing import fp8_round_trip_cache, left_padded_ids
from hf_flashmla.transformers_integration import cache_kwarg, decode_graphs

pytestmark = pytest.mark.triton_gpu
CACHE = cache_kwarg()
FP8 = {"kv_cache_dtype": "fp8_e4m3"}


@pytest.fixture(scope="module")
def model():
    config = make_config("deepseek_v3", base=TINY, num_hidden_layers=3)
    model = random_model(config, seed=3).to(device="cuda", dtype=torch.bfloat16).eval()
    yield model
    decode_graphs.release(model)


def prompts(batch, length, pads, seed=0):
    return left_padded_ids(batch, length, pads, TINY["vocab_size"], seed, device="cuda")


def generate(model, implementation, ids, mask, **kwargs):
    model.set_attn_implementation(implementation)
    return model.generate(ids, attention_mask=mask, max_new_tokens=40, do_sample=False, return_dict_in_generate=True,
                          output_scores=True, **kwargs)


def match_rate(a, b):
    return (a.sequences == b.sequences).float().mean().item()


@pytest.mark.parametrize("batch,length,pads", [(1, 40, (0,)), (4, 70, (0, 9, 66, 3)), (9, 130, (0,) * 8 + (100,))])
def test_fp8_graphs_eager_steps_and_eager_attention_agree(model, batch, length, pads):
    # The FP8 cache takes the path the bf16 one does (the sm_90 kernel on Hopper where the extension is built).
    assert hf_flashmla.backend(torch.device("cuda"), is_fp8_kvcache=True) == hf_flashmla.backend(torch.device("cuda"))
    ids, mask = prompts(batch, length, pads)
    graphs = generate(model, "flash_mla", ids, mask, cache_config=FP8)
    cache = graphs.get(CACHE)
    assert cache.is_fp8 and cache._arena is not None
    assert all(pool.dtype == torch.uint8 and pool.shape[-1] == 656 for pool in cache._arena.pools.values())
    assert model.__dict__["_hf_flashmla_decode_runner"].replays >= 39
    eager_steps = generate(model, "flash_mla", ids, mask, cache_config=FP8, disable_compile=True)
    reference = generate(model, "eager", ids, mask, **{CACHE: fp8_round_trip_cache(model.config)})
    # Graph buckets and a growing cache change the split schedule (shapes only), so bf16 rounding may differ:
    # near-ties can flip a token; a broken replay or layout would disagree everywhere.
    print(f"\nFP8 b={batch}: graphs vs eager steps {match_rate(graphs, eager_steps):.3f}, vs eager attention over the "
          f"FP8 keys {match_rate(graphs, reference):.3f}")
    assert match_rate(graphs, eager_steps) > 0.9
    assert match_rate(graphs, reference) > 0.6
    # Scores compare while a row's tokens agree (after a row parts, each side scores its own continuation); each
    # parting must be where the reference's own logits nearly tie.
    prompt = ids.shape[1]
    tokens, reference_tokens = graphs.sequences[:, prompt:], reference.sequences[:, prompt:]
    scores = torch.stack(graphs.scores, dim=1).float()  # [batch, steps, vocab]
    reference_scores = torch.stack(reference.scores, dim=1).float()
    agreed_before = torch.ones_like(tokens, dtype=torch.bool)
    agreed_before[:, 1:] = (tokens == reference_tokens).cumprod(dim=1)[:, :-1].bool()
    error = (scores - reference_scores)[agreed_before].norm() / reference_scores[agreed_before].norm()
    assert error.item() < 3e-2
    partings = first_divergences(reference_tokens, reference_scores, tokens, tie_rel=2e-2)
    assert all(parting["near_tie"] for parting in partings), partings


def test_fp8_cache_holds_656_bytes_per_token(model):
    ids, mask = prompts(2, 100, (0, 30))
    out = generate(model, "flash_mla", ids, mask, cache_config=FP8)
    cache = out.get(CACHE)
    tokens = sum(cache.sequence_lengths)
    assert tokens == 100 + 70 + 2 * 39
    assert cache.used_bytes() == tokens * 656 * model.config.num_hidden_layers
