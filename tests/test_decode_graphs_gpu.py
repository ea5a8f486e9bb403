"""CUDA-graph decode (decode_graphs) on the GPU: real captures and replays give the tokens of the eager
flash_mla path (bf16, the sm_90 kernel), across generate() calls that reuse or re-capture graphs."""
import pytest
import torch

from hf_flashmla.checkpoint import TINY, make_config, random_model
from hf_flashmla.testing import left_padded_ids
from hf_flashmla.transformers_integration import cache_kwarg, call_counts, decode_graphs, reset_call_counts

pytestmark = pytest.mark.gpu
CACHE = cache_kwarg()


@pytest.fixture(scope="module")
def model():
    config = make_config("deepseek_v3", base=TINY, num_hidden_layers=3)
    model = random_model(config, seed=3).to(device="cuda", dtype=torch.bfloat16).eval()
    model.set_attn_implementation("flash_mla")
    yield model
    decode_graphs.release(model)


def prompts(batch, length, pads, seed=0):
    return left_padded_ids(batch, length, pads, TINY["vocab_size"], seed, device="cuda")


def both(model, ids, mask, **kwargs):
    kwargs.setdefault("max_new_tokens", 20)
    kwargs.setdefault("do_sample", False)
    outs = {}
    for graphs in (False, True):
        if kwargs.get("do_sample"):
            torch.manual_seed(5)
        outs[graphs] = model.generate(ids, attention_mask=mask, disable_compile=not graphs,
                                      return_dict_in_generate=True, **kwargs)
    return outs[False], outs[True]


def runner(model):
    return model.__dict__["_hf_flashmla_decode_runner"]


@pytest.mark.parametrize("batch,length,pads", [(1, 40, (0,)), (3, 70, (0, 9, 66)), (9, 130, (0,) * 8 + (100,))])
def test_graph_tokens_equal_eager_kernel_tokens(model, batch, length, pads):
    ids, mask = prompts(batch, length, pads)
    reset_call_counts()
    eager, graphs = both(model, ids, mask)
    assert call_counts["paged_kernel"] > 0
    assert torch.equal(graphs.sequences, eager.sequences)
    assert runner(model).replays >= 19


def test_sampling_with_a_seed(model):
    ids, mask = prompts(4, 50, (0, 3, 7, 20), seed=1)
    eager, graphs = both(model, ids, mask, do_sample=True, top_k=10)
    assert torch.equal(graphs.sequences, eager.sequences)


def test_prompt_lookup_mixes_eager_chunks_and_graph_steps(model):
    ids, _ = prompts(1, 60, (0,), seed=2)
    ids[0, 30:50] = ids[0, 5:25]
    eager, graphs = both(model, ids, None, prompt_lookup_num_tokens=4)
    assert torch.equal(graphs.sequences, eager.sequences)


def test_repeated_generate_reuses_the_arena(model):
    ids, mask = prompts(3, 90, (0, 30, 60), seed=4)
    first = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    arena = model.__dict__["_hf_flashmla_graph_arena"]
    captures = arena.captures
    second = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    assert torch.equal(first, second)
    assert arena.captures == captures


def test_eos_stop_with_the_deferred_check_undoes_its_extra_step(model):
    ids, _ = prompts(1, 33, (0,), seed=6)
    free_run = model.generate(ids, max_new_tokens=12, do_sample=False)
    eos = int(free_run[0, 33 + 6])
    first = int((free_run[0, 33:] == eos).nonzero()[0, 0])
    eager, graphs = both(model, ids, None, max_new_tokens=12, eos_token_id=eos)
    assert torch.equal(graphs.sequences, eager.sequences)
    assert graphs.sequences.shape[1] == 33 + first + 1
    assert graphs.get(CACHE).sequence_lengths == eager.get(CACHE).sequence_lengths


def test_a_step_that_waits_on_the_device_decodes_eagerly(model):
    # A forward that reads a value on the host (as LongCat-Flash's experts loop does on 5.17) cannot be captured:
    # the capture's CUDA error must end in an eager decode with a warning, and CUDA must keep working.
    config = make_config("deepseek_v3", base=TINY, num_hidden_layers=2)
    syncing = random_model(config, seed=7).to(device="cuda", dtype=torch.bfloat16).eval()
    syncing.set_attn_implementation("flash_mla")
    norm = syncing.model.norm
    original_forward = norm.forward
    norm.forward = lambda hidden: original_forward(hidden) * (hidden.abs().max() >= 0).item()  # a host read
    try:
        ids, mask = prompts(2, 40, (0, 5), seed=8)
        eager = syncing.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, disable_compile=True)
        with pytest.warns(UserWarning, match="decode steps run eagerly"):
            out = syncing.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        assert torch.equal(out, eager)
        assert runner(syncing).replays == 0 and runner(syncing).uncapturable
        assert torch.cuda.current_stream() == torch.cuda.default_stream()
        assert torch.equal(syncing.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False), eager)
    finally:
        decode_graphs.release(syncing)
    # The module's model still captures and replays.
    ids, mask = prompts(2, 40, (0, 5), seed=8)
    before = runner(model).replays
    model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert runner(model).replays > before
