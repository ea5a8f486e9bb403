"""Every bad input raises TypeError/ValueError whose message starts with the argument's name."""
import pytest
import torch

import hf_flashmla
from hf_flashmla import envs, interface, validation
from hf_flashmla.testing import make_paged_inputs

LENGTHS = [65, 0, 130]
S_Q, H_Q = 2, 16


def good_call():
    inputs = make_paged_inputs(LENGTHS, S_Q, H_Q, dtype=torch.bfloat16, seed=1)
    metadata, num_splits = hf_flashmla.get_mla_metadata(inputs.cache_seqlens, S_Q * H_Q, 1)
    return dict(q=inputs.q, k_cache=inputs.k_cache, block_table=inputs.block_table,
                cache_seqlens=inputs.cache_seqlens, head_dim_v=512, tile_scheduler_metadata=metadata,
                num_splits=num_splits, softmax_scale=None, causal=True)


def strided(tensor, dim):
    """Same shape and values, but not contiguous: every other element along `dim` of a tensor twice as long."""
    shape = list(tensor.shape)
    shape[dim] *= 2
    wide = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
    index = [slice(None)] * len(shape)
    index[dim] = slice(None, None, 2)
    view = wide[tuple(index)]
    view.copy_(tensor)
    return view


def misaligned(tensor):
    """The same values in a contiguous view whose data starts one element past a 16-byte boundary."""
    flat = torch.empty(tensor.numel() + 1, dtype=tensor.dtype, device=tensor.device)
    view = flat[1:].view(tensor.shape)
    view.copy_(tensor)
    return view


def on_meta(tensor):
    return torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")


def other_batch_metadata(call):
    metadata, num_splits = hf_flashmla.get_mla_metadata(torch.tensor([4000, 3, 9000], dtype=torch.int32),
                                                        S_Q * H_Q, 1)
    return dict(tile_scheduler_metadata=metadata, num_splits=num_splits)


def with_block_id(row, column, value):
    def change(call):
        table = call["block_table"].clone()
        table[row, column] = value
        return dict(block_table=table)
    return change


def with_length(index, value):
    def change(call):
        lengths = call["cache_seqlens"].clone()
        lengths[index] = value
        return dict(cache_seqlens=lengths)
    return change


# (case id, change to the good call, exception type, argument named in the message)
BAD_CALLS = [
    ("q_not_tensor", lambda c: dict(q=c["q"].tolist()), TypeError, "q"),
    ("q_rank3", lambda c: dict(q=c["q"][0]), ValueError, "q"),
    ("q_head_dim", lambda c: dict(q=c["q"][..., :512].contiguous()), ValueError, "q"),
    ("q_dtype_int", lambda c: dict(q=c["q"].to(torch.int32)), TypeError, "q"),
    ("q_dtype_float64", lambda c: dict(q=c["q"].double()), TypeError, "q"),
    ("q_not_contiguous", lambda c: dict(q=strided(c["q"], 2)), ValueError, "q"),
    ("q_last_dim_strided", lambda c: dict(q=strided(c["q"], 3)), ValueError, "q"),
    ("q_empty_batch", lambda c: dict(q=c["q"][:0]), ValueError, "q"),
    ("k_cache_not_tensor", lambda c: dict(k_cache=None), TypeError, "k_cache"),
    ("k_cache_rank3", lambda c: dict(k_cache=c["k_cache"][:, :, 0]), ValueError, "k_cache"),
    ("k_cache_page_size", lambda c: dict(k_cache=c["k_cache"][:, :32].contiguous()), ValueError, "k_cache"),
    ("k_cache_head_dim", lambda c: dict(k_cache=c["k_cache"][..., :512].contiguous()), ValueError, "k_cache"),
    ("k_cache_dtype", lambda c: dict(k_cache=c["k_cache"].half()), TypeError, "k_cache"),
    ("k_cache_not_contiguous", lambda c: dict(k_cache=strided(c["k_cache"], 0)), ValueError, "k_cache"),
    ("k_cache_h_kv_not_dividing_h_q", lambda c: dict(k_cache=c["k_cache"].expand(-1, -1, 3, -1).contiguous()),
     ValueError, "k_cache"),
    ("k_cache_device", lambda c: dict(k_cache=on_meta(c["k_cache"])), ValueError, "k_cache"),
    ("block_table_not_tensor", lambda c: dict(block_table=c["block_table"].tolist()), TypeError, "block_table"),
    ("block_table_int64", lambda c: dict(block_table=c["block_table"].long()), TypeError, "block_table"),
    ("block_table_rank1", lambda c: dict(block_table=c["block_table"][0]), ValueError, "block_table"),
    ("block_table_rows", lambda c: dict(block_table=c["block_table"][:2]), ValueError, "block_table"),
    ("block_table_strided", lambda c: dict(block_table=strided(c["block_table"], 1)), ValueError, "block_table"),
    ("block_table_device", lambda c: dict(block_table=on_meta(c["block_table"])), ValueError, "block_table"),
    ("cache_seqlens_not_tensor", lambda c: dict(cache_seqlens=LENGTHS), TypeError, "cache_seqlens"),
    ("cache_seqlens_int64", lambda c: dict(cache_seqlens=c["cache_seqlens"].long()), TypeError, "cache_seqlens"),
    ("cache_seqlens_rank2", lambda c: dict(cache_seqlens=c["cache_seqlens"][None]), ValueError, "cache_seqlens"),
    ("cache_seqlens_batch", lambda c: dict(cache_seqlens=c["cache_seqlens"][:2]), ValueError, "cache_seqlens"),
    ("cache_seqlens_strided", lambda c: dict(cache_seqlens=strided(c["cache_seqlens"], 0)), ValueError,
     "cache_seqlens"),
    ("cache_seqlens_device", lambda c: dict(cache_seqlens=on_meta(c["cache_seqlens"])), ValueError, "cache_seqlens"),
    ("cache_seqlens_negative", with_length(1, -1), ValueError, "cache_seqlens"),
    ("cache_seqlens_beyond_block_table", lambda c: with_length(0, c["block_table"].shape[1] * 64 + 1)(c),
     ValueError, "cache_seqlens"),
    ("block_id_past_pool", lambda c: with_block_id(0, 1, c["k_cache"].shape[0])(c), ValueError, "block_table"),
    ("block_id_negative_in_use", with_block_id(2, 2, -1), ValueError, "block_table"),
    ("head_dim_v_576", lambda c: dict(head_dim_v=576), ValueError, "head_dim_v"),
    ("head_dim_v_float", lambda c: dict(head_dim_v=512.0), TypeError, "head_dim_v"),
    ("softmax_scale_str", lambda c: dict(softmax_scale="0.1"), TypeError, "softmax_scale"),
    ("softmax_scale_nan", lambda c: dict(softmax_scale=float("nan")), ValueError, "softmax_scale"),
    ("softmax_scale_zero", lambda c: dict(softmax_scale=0.0), ValueError, "softmax_scale"),
    ("softmax_scale_negative", lambda c: dict(softmax_scale=-0.1), ValueError, "softmax_scale"),
    ("softmax_scale_past_float32", lambda c: dict(softmax_scale=1e300), ValueError, "softmax_scale"),
    ("causal_int", lambda c: dict(causal=1), TypeError, "causal"),
    ("every_tensor_on_meta", lambda c: {name: on_meta(c[name]) for name in
                                        ("q", "k_cache", "block_table", "cache_seqlens", "tile_scheduler_metadata",
                                         "num_splits")}, ValueError, "q"),
    ("metadata_missing", lambda c: dict(tile_scheduler_metadata=None), TypeError, "tile_scheduler_metadata"),
    ("metadata_int64", lambda c: dict(tile_scheduler_metadata=c["tile_scheduler_metadata"].long()), TypeError,
     "tile_scheduler_metadata"),
    ("metadata_width", lambda c: dict(tile_scheduler_metadata=c["tile_scheduler_metadata"][:, :4].contiguous()),
     ValueError, "tile_scheduler_metadata"),
    ("metadata_device", lambda c: dict(tile_scheduler_metadata=on_meta(c["tile_scheduler_metadata"])), ValueError,
     "tile_scheduler_metadata"),
    ("num_splits_missing", lambda c: dict(num_splits=None), TypeError, "num_splits"),
    ("num_splits_int64", lambda c: dict(num_splits=c["num_splits"].long()), TypeError, "num_splits"),
    ("num_splits_not_batch_plus_one", lambda c: dict(num_splits=c["num_splits"][:-1]), ValueError, "num_splits"),
    ("num_splits_device", lambda c: dict(num_splits=on_meta(c["num_splits"])), ValueError, "num_splits"),
    ("metadata_of_another_batch", other_batch_metadata, ValueError, "num_splits"),
    ("metadata_of_a_smaller_batch",
     lambda c: dict(zip(("tile_scheduler_metadata", "num_splits"),
                        hf_flashmla.get_mla_metadata(c["cache_seqlens"][:2].contiguous(), S_Q * H_Q, 1))),
     ValueError, "num_splits"),
    ("sched_meta_with_num_splits", lambda c: dict(tile_scheduler_metadata=hf_flashmla.get_mla_metadata()[0]),
     ValueError, "num_splits"),
]


@pytest.mark.parametrize("change,error,argument", [case[1:] for case in BAD_CALLS],
                         ids=[case[0] for case in BAD_CALLS])
def test_bad_input_names_the_argument(change, error, argument):
    call = good_call()
    call.update(change(call))
    with pytest.raises(error) as raised:
        hf_flashmla.flash_mla_with_kvcache(**call)
    message = str(raised.value)
    assert message.startswith(argument + ":"), message
    assert "expected" in message or "match" in message or "differs" in message, message


def test_a_numpy_bool_is_named_as_numpy_s():
    numpy = pytest.importorskip("numpy")
    with pytest.raises(TypeError, match=r"^causal: expected a bool, got numpy\.bool"):
        hf_flashmla.flash_mla_with_kvcache(**{**good_call(), "causal": numpy.bool_(True)})


def test_bad_check_values_flag():
    with pytest.raises(TypeError, match="^check_values:"):
        hf_flashmla.flash_mla_with_kvcache(**good_call(), check_values="yes")


def test_the_good_call_passes_and_unused_block_ids_are_ignored():
    call = good_call()
    # Row 0 uses 2 pages, row 1 none, row 2 three: the rest of each row is never read.
    call["block_table"][0, 2] = 10**6
    call["block_table"][1, :] = -7
    out, lse = hf_flashmla.flash_mla_with_kvcache(**call)
    assert out.shape == (3, S_Q, H_Q, 512)


BAD_METADATA_ARGS = [
    ("cache_seqlens_int64", (torch.tensor([3, 4]), 16, 1), TypeError, "cache_seqlens"),
    ("cache_seqlens_rank2", (torch.tensor([[3, 4]], dtype=torch.int32), 16, 1), ValueError, "cache_seqlens"),
    ("cache_seqlens_empty", (torch.zeros(0, dtype=torch.int32), 16, 1), ValueError, "cache_seqlens"),
    ("cache_seqlens_list", ([3, 4], 16, 1), TypeError, "cache_seqlens"),
    ("num_heads_k_missing", (torch.tensor([3, 4], dtype=torch.int32), 16), TypeError, "num_heads_k"),
    ("rows_missing", (torch.tensor([3, 4], dtype=torch.int32),), TypeError, "num_q_tokens_per_head_k"),
    ("rows_zero", (torch.tensor([3, 4], dtype=torch.int32), 0, 1), ValueError, "num_q_tokens_per_head_k"),
    ("num_heads_k_float", (torch.tensor([3, 4], dtype=torch.int32), 16, 1.0), TypeError, "num_heads_k"),
    ("num_heads_k_zero", (torch.tensor([3, 4], dtype=torch.int32), 16, 0), ValueError, "num_heads_k"),
    ("rows_past_int32", (torch.tensor([3, 4], dtype=torch.int32), 2 ** 70, 1), ValueError, "num_q_tokens_per_head_k"),
    ("num_heads_k_past_int32", (torch.tensor([3, 4], dtype=torch.int32), 16, 2 ** 31), ValueError, "num_heads_k"),
    ("cache_seqlens_negative", (torch.tensor([3, -4], dtype=torch.int32), 16, 1), ValueError, "cache_seqlens"),
]


@pytest.mark.parametrize("args,error,argument", [case[1:] for case in BAD_METADATA_ARGS],
                         ids=[case[0] for case in BAD_METADATA_ARGS])
def test_bad_metadata_arguments_name_the_argument(args, error, argument):
    with pytest.raises(error) as raised:
        hf_flashmla.get_mla_metadata(*args)
    assert str(raised.value).startswith(argument + ":"), str(raised.value)


def test_kernel_path_rejects_what_only_the_reference_accepts():
    call = good_call()
    inputs = (call["q"], call["k_cache"], call["block_table"], call["cache_seqlens"], 512, None, True)
    validation.check_inputs(*inputs, for_kernel=True)
    validation.check_inputs(call["q"].float(), call["k_cache"].float(), *inputs[2:], for_kernel=False)
    with pytest.raises(TypeError, match="^q:"):
        validation.check_inputs(call["q"].float(), call["k_cache"].float(), *inputs[2:], for_kernel=True)
    grouped = call["k_cache"].expand(-1, -1, 2, -1).contiguous()
    validation.check_inputs(call["q"], grouped, *inputs[2:], for_kernel=False)
    with pytest.raises(ValueError, match="^k_cache:"):
        validation.check_inputs(call["q"], grouped, *inputs[2:], for_kernel=True)


@pytest.mark.parametrize("env_value,expected", [(None, False), ("0", False), ("1", True), ("true", True)])
def test_value_checks_default_comes_from_the_environment(monkeypatch, env_value, expected):
    if env_value is None:
        monkeypatch.delenv(envs.CHECK_VALUES.name, raising=False)
    else:
        monkeypatch.setenv(envs.CHECK_VALUES.name, env_value)
    assert interface._value_checks_requested(None) is expected
    assert interface._value_checks_requested(True) is True
    assert interface._value_checks_requested(False) is False


def test_negative_lengths_name_the_index_and_are_checked_on_cuda_when_asked(monkeypatch):
    with pytest.raises(ValueError, match="^cache_seqlens: expected values >= 0, got -4 at index 1"):
        hf_flashmla.get_mla_metadata(torch.tensor([3, -4], dtype=torch.int32), 16, 1)
    # On CUDA the check reads values (a sync): it runs where value checks are on, as in flash_mla_with_kvcache.
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda", 0)))
    checked = []
    monkeypatch.setattr(validation, "check_metadata_lengths", lambda lengths: checked.append(lengths))
    monkeypatch.setattr(interface.schedule, "compute_schedule", lambda *args, **kwargs: ("metadata", "splits"))
    lengths = torch.tensor([3, -4], dtype=torch.int32)
    monkeypatch.delenv(envs.CHECK_VALUES.name, raising=False)
    hf_flashmla.get_mla_metadata(lengths, 16, 1)
    assert checked == []
    hf_flashmla.get_mla_metadata(lengths, 16, 1, check_values=True)
    monkeypatch.setenv(envs.CHECK_VALUES.name, "1")
    hf_flashmla.get_mla_metadata(lengths, 16, 1)
    assert len(checked) == 2


def test_constants_agree_with_the_schedule():
    # validation.py repeats two of schedule.py's constants (it must not import it: _ops's fake impls use it).
    from hf_flashmla import schedule
    assert (validation.PAGE_SIZE, validation.METADATA_WIDTH) == (schedule.PAGE_SIZE, schedule.METADATA_WIDTH)


# Bad inputs that only a value check finds (no sync on CUDA unless asked).
VALUE_CASES = {"cache_seqlens_negative", "cache_seqlens_beyond_block_table", "block_id_past_pool",
               "block_id_negative_in_use", "metadata_of_another_batch"}


def on_cuda(value):
    return value.cuda() if isinstance(value, torch.Tensor) and value.device.type == "cpu" else value


@pytest.mark.gpu
@pytest.mark.parametrize("check_values", [False, True], ids=["hot_path", "value_checks"])
@pytest.mark.parametrize("change,error,argument", [case[1:] for case in BAD_CALLS],
                         ids=[case[0] for case in BAD_CALLS])
def test_bad_input_names_the_argument_on_the_kernel_path(change, error, argument, check_values):
    # On the sm_90 path the op checks the structure in C++ (csrc/mla_checks.h): same exception, same argument.
    name = next(case[0] for case in BAD_CALLS if case[1] is change)
    if name in VALUE_CASES and not check_values:
        pytest.skip("found by a value check only, which the hot path skips on CUDA")
    # The change is made to the CUDA tensors: moving a strided CPU tensor with .cuda() would make it contiguous
    # (a copy), and the layout cases would test nothing. Tensors a change creates on the CPU are moved after it.
    call = {key: on_cuda(value) for key, value in good_call().items()}
    call.update({key: on_cuda(value) for key, value in change(call).items()})
    with pytest.raises(error) as raised:
        hf_flashmla.flash_mla_with_kvcache(**call, check_values=check_values)
    message = str(raised.value)
    assert message.startswith(argument + ":"), message


def test_kernel_path_checks_trace_into_one_graph():
    # torch.compile(fullgraph=True) over flash_mla_with_kvcache traces these checks (FlashMLA's callers compile the
    # call): the alignment check's data_ptr() broke that graph, so it is left to the op's C++ while tracing.
    call = good_call()
    inputs = (call["q"], call["k_cache"], call["block_table"], call["cache_seqlens"], 512, None, True)

    def checked(q, k_cache, block_table, cache_seqlens):
        validation.check_inputs(q, k_cache, block_table, cache_seqlens, *inputs[4:], for_kernel=True)
        return q * 2

    torch._dynamo.reset()
    compiled = torch.compile(checked, fullgraph=True, backend="eager")
    assert torch.equal(compiled(*inputs[:4]), call["q"] * 2)


@pytest.mark.gpu
@pytest.mark.parametrize("argument", ["q", "k_cache"])
def test_misaligned_views_are_refused_on_the_kernel_path(argument):
    # TMA reads q and k_cache from 16-byte aligned addresses: a view one element past such a boundary is refused by
    # name (csrc/mla_checks.h), never read from a rounded address or a failed tensor map.
    call = {key: on_cuda(value) for key, value in good_call().items()}
    call[argument] = misaligned(call[argument])
    with pytest.raises(ValueError, match=f"^{argument}: expected data aligned to 16 bytes"):
        hf_flashmla.flash_mla_with_kvcache(**call)
