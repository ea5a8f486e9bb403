"""Bad input to the public helpers beside flash_mla_with_kvcache (the FP8 layout's quantize / dequantize, the
reference, backend()): TypeError / ValueError whose message starts with the argument's name, never a wrong answer."""
import pytest
import torch

import hf_flashmla
from hf_flashmla import dispatch, fp8_latent, mla_decode_reference
from hf_flashmla.testing import make_paged_inputs

LATENT = torch.randn(4, 576, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))


def expect(error, argument, call):
    with pytest.raises(error) as raised:
        call()
    assert str(raised.value).startswith(argument + ":"), str(raised.value)


@pytest.mark.parametrize("latent,rank,error,argument", [
    (LATENT.tolist(), 512, TypeError, "latent"),
    (None, 512, TypeError, "latent"),
    (LATENT.long(), 512, TypeError, "latent"),
    (torch.ones(4, 656, dtype=torch.uint8), 512, TypeError, "latent"),  # already quantized
    (torch.tensor(1.0), 512, ValueError, "latent"),
    (LATENT, 0, ValueError, "kv_lora_rank"),
    (LATENT, 100, ValueError, "kv_lora_rank"),
    (LATENT, -128, ValueError, "kv_lora_rank"),
    (LATENT, 640, ValueError, "kv_lora_rank"),
    (LATENT, None, TypeError, "kv_lora_rank"),
    (LATENT, 512.0, TypeError, "kv_lora_rank"),
    (LATENT, True, TypeError, "kv_lora_rank"),
], ids=["list", "none", "int64", "bytes", "scalar", "rank_0", "rank_100", "rank_negative", "rank_past_row",
        "rank_none", "rank_float", "rank_bool"])
def test_quantize_names_the_bad_argument(latent, rank, error, argument):
    expect(error, argument, lambda: fp8_latent.quantize(latent, rank))


STORED = fp8_latent.quantize(LATENT, 512)


@pytest.mark.parametrize("stored,rank,dtype,error,argument", [
    (LATENT, 512, torch.float32, TypeError, "stored"),
    (torch.zeros(4, 656), 512, torch.float32, TypeError, "stored"),
    (STORED.tolist(), 512, torch.float32, TypeError, "stored"),
    (STORED[:, :527], 512, torch.float32, ValueError, "stored"),  # shorter than latent + scales
    (STORED[:, :655], 512, torch.float32, ValueError, "stored"),  # half a rope value
    (STORED, 100, torch.float32, ValueError, "kv_lora_rank"),
    (STORED, 512, torch.int32, TypeError, "dtype"),
    (STORED, 512, "bf16", TypeError, "dtype"),
], ids=["bf16", "float32", "list", "short", "odd", "rank_100", "int_dtype", "str_dtype"])
def test_dequantize_names_the_bad_argument(stored, rank, dtype, error, argument):
    expect(error, argument, lambda: fp8_latent.dequantize(stored, rank, dtype))


def test_quantize_round_trip_still_holds():
    back = fp8_latent.dequantize(STORED, 512, torch.float32)
    assert back.shape == (4, 576)
    assert torch.equal(back[:, 512:], LATENT[:, 512:].float())


def reference_call():
    inputs = make_paged_inputs([70, 130], 1, 4, dtype=torch.bfloat16, seed=3)
    return dict(q=inputs.q, k_cache=inputs.k_cache, block_table=inputs.block_table,
                cache_seqlens=inputs.cache_seqlens, head_dim_v=512)


def with_lengths(*lengths):
    return lambda c: dict(cache_seqlens=torch.tensor(lengths, dtype=torch.int32))


@pytest.mark.parametrize("change,error,argument", [
    (lambda c: dict(cache_seqlens=c["cache_seqlens"][:1]), ValueError, "cache_seqlens"),  # was: a silent 0 row
    (with_lengths(70, 64 * 1000), ValueError, "cache_seqlens"),                          # was: silently cut
    (with_lengths(-3, 130), ValueError, "cache_seqlens"),
    (lambda c: dict(q=c["q"][..., :512]), ValueError, "k_cache"),
    (lambda c: dict(head_dim_v=600), ValueError, "head_dim_v"),
    (lambda c: dict(head_dim_v=512.0), TypeError, "head_dim_v"),
    (lambda c: dict(softmax_scale=-1.0), ValueError, "softmax_scale"),
    (lambda c: dict(causal=1), TypeError, "causal"),
    (lambda c: dict(k_cache=c["k_cache"].half()), TypeError, "k_cache"),
    (lambda c: dict(block_table=c["block_table"].float()), TypeError, "block_table"),
    (lambda c: dict(q=c["q"].long(), k_cache=c["k_cache"].long()), TypeError, "q"),
    (lambda c: dict(block_table=torch.full_like(c["block_table"], c["k_cache"].shape[0])), ValueError,
     "block_table"),
    (lambda c: dict(q=c["q"].tolist()), TypeError, "q"),
    (lambda c: dict(is_fp8_kvcache=True), TypeError, "k_cache"),
], ids=["short_lengths", "length_past_table", "negative_length", "q_512", "head_dim_v_600", "head_dim_v_float",
        "negative_scale", "causal_int", "k_cache_fp16", "block_table_float", "int64", "block_id_past_pool", "q_list",
        "fp8_flag_on_bf16_cache"])
def test_reference_names_the_bad_argument(change, error, argument):
    call = reference_call()
    call.update(change(call))
    expect(error, argument, lambda: mla_decode_reference(**call))


def test_reference_takes_other_latents_and_page_sizes():
    # The reference serves latents the kernel does not (e.g. 256 + 32, page size 16) for the Triton / CPU paths.
    q = torch.randn(1, 1, 2, 288)
    k_cache = torch.randn(4, 16, 1, 288)
    block_table = torch.tensor([[2, 0, 3]], dtype=torch.int32)
    out, lse = mla_decode_reference(q, k_cache, block_table, torch.tensor([40], dtype=torch.int32), 256)
    assert out.shape == (1, 1, 2, 256) and torch.isfinite(lse).all()


@pytest.mark.parametrize("args,kwargs,error,argument", [
    (("nonsense",), {}, ValueError, "device_or_tensor"),
    ((3.5,), {}, TypeError, "device_or_tensor"),
    (("cpu",), dict(num_heads_k=0), ValueError, "num_heads_k"),
    (("cpu",), dict(num_heads_k=1.5), TypeError, "num_heads_k"),
    (("cpu",), dict(num_heads_k=[1]), TypeError, "num_heads_k"),
    (("cpu",), dict(is_fp8_kvcache="no"), TypeError, "is_fp8_kvcache"),
], ids=["device_string", "device_float", "heads_zero", "heads_float", "heads_list", "fp8_string"])
def test_backend_names_the_bad_argument(args, kwargs, error, argument):
    expect(error, argument, lambda: hf_flashmla.backend(*args, **kwargs))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a torch build without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_backend_of_a_cuda_device_without_cuda(device):
    dispatch.forget_choices()
    expect(ValueError, "device_or_tensor", lambda: hf_flashmla.backend(device))
