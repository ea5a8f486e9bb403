"""Public API: both FlashMLA generations, the newest generation's cached schedule, backend choice
and dispatch."""
import pytest
import torch

import hf_flashmla
from hf_flashmla import _ops, dispatch, interface, schedule
from hf_flashmla.dispatch import BackendChoice
from hf_flashmla.envs import BACKEND
from hf_flashmla.testing import make_paged_inputs

BACKEND_ENV_VAR = BACKEND.name


@pytest.fixture(autouse=True)
def fresh_backend_choices(monkeypatch):
    """Each test starts with no cached backend choice, and what it caches (monkeypatched devices) goes with it."""
    monkeypatch.setattr(dispatch, "_CHOICES", {})


def first_generation(inputs, causal, **kwargs):
    _, s_q, h_q, _ = inputs.q.shape
    metadata, num_splits = hf_flashmla.get_mla_metadata(inputs.cache_seqlens, s_q * h_q // 1, 1)
    return hf_flashmla.flash_mla_with_kvcache(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens,
                                              512, metadata, num_splits, causal=causal, **kwargs)


def newest_generation(inputs, sched_meta, causal=True, **kwargs):
    return hf_flashmla.flash_mla_with_kvcache(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens,
                                              512, sched_meta, None, causal=causal, **kwargs)


def emulate_kernel(q, k_cache, block_table, cache_seqlens, metadata, num_splits, softmax_scale, causal, head_dim_v,
                   schedule_seqlens=None):
    """What the sm_90 op computes, from the schedule it is given (CPU, float64): each part's items as the kernel
    walks them (schedule.iterate_part), a partial softmax per item, merged per sequence by lse. A schedule that
    misses or repeats a page, or belongs to other lengths, gives another result or fails here."""
    batch, s_q, h_q, _ = q.shape
    lengths = cache_seqlens.tolist()
    num_blocks = [-(-n // 64) for n in lengths]
    partials = [[] for _ in range(batch)]  # (out [s_q, h_q, dv], lse [s_q, h_q]) per item
    covered = [[0] * n for n in num_blocks]
    for row in metadata.tolist():
        for i, start, stop, _ in schedule.iterate_part(row, num_blocks):
            for page in range(start, stop):
                assert page < num_blocks[i], "the schedule must cover every page exactly once (a page past the end)"
                covered[i][page] += 1
            keys = k_cache[block_table[i, start:stop].long()].reshape(-1, k_cache.shape[-1])[:lengths[i] - 64 * start]
            keys = keys.double()
            scores = torch.einsum("thd,kd->thk", q[i].double(), keys) * softmax_scale
            key_index = torch.arange(64 * start, 64 * start + keys.shape[0])
            last = torch.arange(s_q) + lengths[i] - s_q if causal else torch.full((s_q,), lengths[i] - 1)
            scores = scores.masked_fill(key_index[None, None, :] > last[:, None, None], float("-inf"))
            lse = torch.logsumexp(scores, dim=-1)
            weights = torch.exp(scores - lse[..., None]).nan_to_num(0.0)
            partials[i].append((torch.einsum("thk,kd->thd", weights, keys[:, :head_dim_v]), lse))
    assert covered == [[1] * n for n in num_blocks], "the schedule must cover every page exactly once"
    out = torch.zeros(batch, s_q, h_q, head_dim_v, dtype=torch.float64)
    lse = torch.full((batch, h_q, s_q), float("inf"), dtype=torch.float64)
    for i, items in enumerate(partials):
        if not items:
            continue
        item_lse = torch.stack([item[1] for item in items])  # [items, s_q, h_q]
        total = torch.logsumexp(item_lse, dim=0)
        seen = torch.isfinite(total)
        weights = torch.exp(item_lse - total).nan_to_num(0.0)
        out[i] = (weights[..., None] * torch.stack([item[0] for item in items])).sum(0)
        lse[i] = torch.where(seen, total, float("inf")).transpose(0, 1)
    return out.to(q.dtype), lse.float()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths,s_q,h_q", [([70], 1, 16), ([0, 300, 64, 1], 2, 64), ([5] * 8, 4, 128),
                                             ([4000, 70, 129], 2, 16)])
def test_both_generations_give_identical_results(monkeypatch, lengths, s_q, h_q, causal):
    # Both generations through the kernel's path, the kernel emulated on the CPU from the schedule it receives:
    # the schedule each generation computes and passes must be the same and must give the reference's result.
    received = []

    def kernel(*args, is_fp8_kvcache=False):
        assert not is_fp8_kvcache
        received.append(args)
        return emulate_kernel(*args)

    monkeypatch.setattr(dispatch, "choice_for",
                        lambda device, num_heads_k, fp8=False: BackendChoice("cuda_sm90", "emulated"))
    monkeypatch.setattr(_ops, "mla_decode", kernel)
    inputs = make_paged_inputs(lengths, s_q, h_q, dtype=torch.float16, seed=len(lengths))
    out_first, lse_first = first_generation(inputs, causal)
    sched_meta, none = hf_flashmla.get_mla_metadata()
    assert none is None and isinstance(sched_meta, hf_flashmla.FlashMLASchedMeta)
    out_newest, lse_newest = newest_generation(inputs, sched_meta, causal)
    (first_args, newest_args) = received
    assert torch.equal(first_args[4], newest_args[4]) and torch.equal(first_args[5], newest_args[5])
    assert torch.equal(out_first, out_newest) and torch.equal(lse_first, lse_newest)
    ref_out, ref_lse = hf_flashmla.mla_decode_reference(inputs.q, inputs.k_cache, inputs.block_table,
                                                        inputs.cache_seqlens, 512, None, causal)
    torch.testing.assert_close(out_first, ref_out, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(lse_first, ref_lse, atol=1e-4, rtol=1e-4)


def test_the_kernel_emulation_notices_a_wrong_schedule(monkeypatch):
    # What test_both_generations_give_identical_results relies on: a schedule of other lengths fails.
    inputs = make_paged_inputs([4000, 70, 129], 2, 16, dtype=torch.float16, seed=3)
    metadata, num_splits = hf_flashmla.get_mla_metadata(torch.tensor([4000, 70, 200], dtype=torch.int32), 32, 1)
    with pytest.raises(AssertionError, match="exactly once"):
        emulate_kernel(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, metadata, num_splits,
                       576 ** -0.5, True, 512)


def test_newest_generation_computes_the_schedule_once_and_reuses_it():
    inputs = make_paged_inputs([0, 300, 64, 1], 2, 16, seed=2)
    sched_meta, _ = hf_flashmla.get_mla_metadata()
    assert not sched_meta.initialized
    first = newest_generation(inputs, sched_meta)
    metadata = sched_meta.tile_scheduler_metadata
    expected = hf_flashmla.get_mla_metadata(inputs.cache_seqlens, 2 * 16, 1)
    assert torch.equal(metadata, expected[0]) and torch.equal(sched_meta.num_splits, expected[1])
    # A later layer: same batch, new q and cache contents.
    inputs.q.normal_()
    second = newest_generation(inputs, sched_meta)
    assert sched_meta.tile_scheduler_metadata is metadata
    assert not torch.equal(first[0], second[0])
    # Equal values in a fresh tensor are the same batch state.
    inputs.cache_seqlens = inputs.cache_seqlens.clone()
    newest_generation(inputs, sched_meta)


def mismatched_calls():
    def other_batch_size(inputs):
        return make_paged_inputs([0, 300, 64], 2, 16, seed=3)

    def other_s_q(inputs):
        return make_paged_inputs([0, 300, 64, 1], 1, 16, seed=3)

    def other_h_q(inputs):
        return make_paged_inputs([0, 300, 64, 1], 2, 32, seed=3)

    def other_lengths(inputs):
        # Still within each sequence's pages, so only the schedule check can object.
        inputs.cache_seqlens = torch.tensor([0, 299, 64, 1], dtype=torch.int32)
        return inputs

    def lengths_written_in_place(inputs):
        inputs.cache_seqlens[1] -= 1
        return inputs

    return {"batch_size": (other_batch_size, "tile_scheduler_metadata"),
            "s_q": (other_s_q, "tile_scheduler_metadata"),
            "h_q": (other_h_q, "tile_scheduler_metadata"),
            "lengths": (other_lengths, "cache_seqlens"),
            "lengths_in_place": (lengths_written_in_place, "cache_seqlens")}


@pytest.mark.parametrize("name", sorted(mismatched_calls()))
def test_newest_generation_mismatch_raises(name):
    change, argument = mismatched_calls()[name]
    inputs = make_paged_inputs([0, 300, 64, 1], 2, 16, seed=3)
    sched_meta, _ = hf_flashmla.get_mla_metadata()
    newest_generation(inputs, sched_meta)
    with pytest.raises(ValueError, match=f"^{argument}:"):
        newest_generation(change(inputs), sched_meta)


def test_identity_comparison_used_when_values_are_not_read():
    # What CUDA tensors get without check_values: same tensor and version, or an error.
    inputs = make_paged_inputs([10, 70], 1, 16, seed=4)
    sched_meta = interface.FlashMLASchedMeta()
    sched_meta.schedule_for(inputs.q, inputs.k_cache, inputs.cache_seqlens, compare_values=False)
    sched_meta.schedule_for(inputs.q, inputs.k_cache, inputs.cache_seqlens, compare_values=False)
    with pytest.raises(ValueError, match="^cache_seqlens:.*check_values=True"):
        sched_meta.schedule_for(inputs.q, inputs.k_cache, inputs.cache_seqlens.clone(), compare_values=False)
    # ... which the value comparison accepts.
    sched_meta.schedule_for(inputs.q, inputs.k_cache, inputs.cache_seqlens.clone(), compare_values=True)
    inputs.cache_seqlens[0] = 10  # same value, but an in-place write
    with pytest.raises(ValueError, match="^cache_seqlens:"):
        sched_meta.schedule_for(inputs.q, inputs.k_cache, inputs.cache_seqlens, compare_values=False)


def test_newest_generation_under_inference_mode():
    # Inference tensors have no version counter: the identity check does without it, and CPU compares values.
    with torch.inference_mode():
        inputs = make_paged_inputs([10, 70, 0], 2, 16, seed=4)
        sched_meta, _ = hf_flashmla.get_mla_metadata()
        first = newest_generation(inputs, sched_meta)
        second = newest_generation(inputs, sched_meta)
        assert torch.equal(first[0], second[0])
        inputs.cache_seqlens[1] -= 1
        with pytest.raises(ValueError, match="^cache_seqlens:"):
            newest_generation(inputs, sched_meta)
        other = interface.FlashMLASchedMeta()
        other.schedule_for(inputs.q, inputs.k_cache, inputs.cache_seqlens, compare_values=False)
        other.schedule_for(inputs.q, inputs.k_cache, inputs.cache_seqlens, compare_values=False)
        with pytest.raises(ValueError, match="^cache_seqlens:.*identity"):
            other.schedule_for(inputs.q, inputs.k_cache, inputs.cache_seqlens.clone(), compare_values=False)


def test_newest_generation_under_torch_compile():
    inputs = make_paged_inputs([10, 70, 0], 2, 16, seed=4)

    def attend(q, k_cache, block_table, cache_seqlens, sched_meta):
        out, lse = hf_flashmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512, sched_meta, None,
                                                      causal=True)
        return out * 2, lse

    torch._dynamo.reset()
    compiled = torch.compile(attend, backend="eager")
    sched_meta, _ = hf_flashmla.get_mla_metadata()
    args = (inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens)
    got = compiled(*args, sched_meta)
    again = compiled(*args, sched_meta)  # the schedule computed inside the first compiled call is reused
    expected = attend(*args, hf_flashmla.get_mla_metadata()[0])
    assert sched_meta.initialized
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1]) and torch.equal(again[0], got[0])
    changed = inputs.cache_seqlens.clone()
    changed[1] -= 1
    with pytest.raises(ValueError, match="cache_seqlens"):
        compiled(inputs.q, inputs.k_cache, inputs.block_table, changed, sched_meta)


def test_backend_reports_reference_on_cpu_with_a_reason(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    for where in (torch.zeros(1), "cpu", torch.device("cpu")):
        choice = hf_flashmla.backend(where)
        assert isinstance(choice, BackendChoice)
        assert choice.name == "reference" and "not a CUDA device" in choice.reason
    if not torch.cuda.is_available():
        assert hf_flashmla.backend().name == "reference"


def test_backend_environment_override(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV_VAR, "reference")
    assert hf_flashmla.backend("cpu") == BackendChoice("reference", f"forced by {BACKEND_ENV_VAR}=reference")
    monkeypatch.setenv(BACKEND_ENV_VAR, "cuda_sm90")
    with pytest.raises(RuntimeError, match="not a CUDA device"):
        hf_flashmla.backend("cpu")
    monkeypatch.setenv(BACKEND_ENV_VAR, "fast")
    with pytest.raises(ValueError, match=f"^{BACKEND_ENV_VAR}:"):
        hf_flashmla.backend("cpu")


def test_backend_without_extension_says_so(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    dispatch.forget_choices()
    monkeypatch.setattr(_ops, "extension_available", lambda: False)
    dispatch.forget_choices()
    monkeypatch.setattr(dispatch, "triton_import_error", lambda: "no triton")  # else Triton is chosen
    dispatch.forget_choices()
    choice = dispatch.backend(torch.device("cuda", 0))
    assert choice.name == "reference" and "not built" in choice.reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    dispatch.forget_choices()
    assert "8.0" in dispatch.backend(torch.device("cuda", 0)).reason


def pretend_hopper_with_extension(monkeypatch, triton_error=None):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    dispatch.forget_choices()
    monkeypatch.setattr(_ops, "extension_available", lambda: True)
    dispatch.forget_choices()
    monkeypatch.setattr(dispatch, "triton_import_error", lambda: triton_error)
    dispatch.forget_choices()


@pytest.mark.parametrize("h_kv", [2, 3, 8])
def test_grouped_kv_heads_fall_back_without_an_environment_variable(monkeypatch, h_kv):
    # FlashMLA accepts h_kv > 1; the sm_90 kernel serves h_kv = 1 only: Triton takes it, or the reference.
    pretend_hopper_with_extension(monkeypatch)
    cuda = torch.device("cuda", 0)
    assert hf_flashmla.backend(cuda).name == "cuda_sm90"
    choice = hf_flashmla.backend(cuda, num_heads_k=h_kv)
    assert choice.name == "triton" and f"h_kv = {h_kv}" in choice.reason and "Triton kernel runs" in choice.reason
    assert dispatch.choice_for(cuda, h_kv) == choice
    pretend_hopper_with_extension(monkeypatch, triton_error="ImportError: no triton")
    choice = hf_flashmla.backend(cuda, num_heads_k=h_kv)
    assert choice.name == "reference" and f"h_kv = {h_kv}" in choice.reason and "no triton" in choice.reason
    monkeypatch.setenv(BACKEND_ENV_VAR, "cuda_sm90")
    with pytest.raises(RuntimeError, match=f"h_kv = {h_kv}"):
        hf_flashmla.backend(cuda, num_heads_k=h_kv)


def test_the_choice_is_cached_per_device(monkeypatch):
    # The hot path asks no device property per call; the environment variable is still read at each call.
    pretend_hopper_with_extension(monkeypatch)
    cuda = torch.device("cuda", 0)
    hf_flashmla.backend(cuda)
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or (9, 0))
    for _ in range(3):
        assert dispatch.choice_for(cuda, 1).name == "cuda_sm90" and hf_flashmla.backend(cuda).name == "cuda_sm90"
    assert asked == []
    monkeypatch.setenv(BACKEND_ENV_VAR, "reference")
    assert dispatch.choice_for(cuda, 1).name == "reference"
    monkeypatch.delenv(BACKEND_ENV_VAR)
    assert dispatch.choice_for(cuda, 1).name == "cuda_sm90"


@pytest.mark.parametrize("generation", ["first", "newest"])
def test_kernel_backend_receives_the_schedule_and_defaults(monkeypatch, generation):
    calls = []

    def fake_kernel(*args, is_fp8_kvcache=False):
        assert not is_fp8_kvcache
        calls.append(args)
        return torch.zeros(1), torch.zeros(1)

    monkeypatch.setattr(dispatch, "choice_for",
                        lambda device, num_heads_k, fp8=False: BackendChoice("cuda_sm90", "test"))
    monkeypatch.setattr(_ops, "mla_decode", fake_kernel)
    inputs = make_paged_inputs([100, 3], 2, 16, dtype=torch.float16, seed=5)
    if generation == "first":
        first_generation(inputs, causal=True)
    else:
        newest_generation(inputs, hf_flashmla.get_mla_metadata()[0], causal=True)
    (q, k_cache, block_table, cache_seqlens, metadata, num_splits, scale, causal, head_dim_v, schedule_seqlens), = calls
    assert q is inputs.q and k_cache is inputs.k_cache and block_table is inputs.block_table
    assert cache_seqlens is inputs.cache_seqlens
    expected_metadata, expected_splits = schedule.compute_schedule(inputs.cache_seqlens, 2 * 16, 1)
    assert torch.equal(metadata, expected_metadata) and torch.equal(num_splits, expected_splits)
    assert scale == pytest.approx(576 ** -0.5) and isinstance(scale, float)
    assert causal is True and head_dim_v == 512
    if generation == "first":  # the caller vouches for the metadata
        assert schedule_seqlens is None
    else:  # the copy the schedule was computed for, which the kernel compares with cache_seqlens
        assert schedule_seqlens is not cache_seqlens and torch.equal(schedule_seqlens, cache_seqlens)


def test_package_exports():
    assert hf_flashmla.__version__ == "0.1.0"
    for name in ("get_mla_metadata", "flash_mla_with_kvcache", "backend", "mla_decode_reference"):
        assert callable(getattr(hf_flashmla, name))
