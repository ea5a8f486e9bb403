"""The FP8 latent layout (hf_flashmla/fp8_latent.py), the reference and the Triton kernel reading it, and the public
API's checks of FP8 inputs.

CPU: the quantization round trip, the reference against a bf16 cache holding the dequantized keys (exactly equal:
the reference dequantizes as the kernels do) and against float64 attention, the Triton kernel under Triton's
interpreter (tests/conftest.py sets TRITON_INTERPRET=1 where there is no CUDA), bad input.
GPU: the sm_90 kernel (marker gpu: its narrow kernel for s_q * h_q <= 32, against the reference's exact keys; the
seesaw kernel's FP8 feed above) and the Triton FP8 kernel (marker triton_gpu) against the reference on the
configuration matrix, through the public API, with bytes that decode as NaN everywhere no sequence reads; the fused
FP8 write against fp8_latent.quantize, byte for byte. Run on the GPU machine:
    python3 -m pytest -q -rs tests/test_fp8_kernel.py
"""
import importlib
import itertools
from pathlib import Path

import pytest
import torch

import hf_flashmla
from hf_flashmla import _ops, dispatch, fp8_latent, mla_decode_reference
from hf_flashmla.envs import BACKEND
from hf_flashmla.latent_cache import LatentPagedCache
from hf_flashmla.testing import dense_attention, make_paged_inputs, scale_pages
from paged_garbage import used_token_mask

DV = 512
SCALE = 576 ** -0.5
# Relative Frobenius error of out against the reference, as tests/test_triton_decode.py's (P rounded to the input
# dtype before P V); the FP8 keys are dequantized identically in both, so no extra allowance.
OUT_TOLERANCE = {torch.bfloat16: 1e-2, torch.float32: 1e-5}
LSE_ATOL, LSE_RTOL = 1e-3, 1e-4


@pytest.fixture(autouse=True)
def fresh_backend_choices(monkeypatch):
    monkeypatch.setattr(dispatch, "_CHOICES", {})


def fp8_inputs(lengths, s_q, h_q, dtype=torch.bfloat16, seed=0, device="cpu", h_kv=1):
    """Paged inputs whose cache is the FP8 layout of make_paged_inputs' random keys (scaled per token, so that the
    groups' scales differ widely)."""
    inputs = make_paged_inputs(lengths, s_q, h_q, h_kv, dtype=torch.float32, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    spread = torch.exp(torch.randn(inputs.k_cache.shape[:-1] + (1,), generator=generator) * 2)
    inputs.k_cache = fp8_latent.quantize(inputs.k_cache * spread, DV).to(device)
    inputs.q = inputs.q.to(dtype=dtype, device=device)
    inputs.block_table = inputs.block_table.to(device)
    inputs.cache_seqlens = inputs.cache_seqlens.to(device)
    return inputs


def reference(inputs, causal):
    return mla_decode_reference(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, DV, SCALE, causal,
                                is_fp8_kvcache=True)


def relative_error(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ------------------------------------------------------------------------------------------ quantization
def test_layout_is_flashmla_656_bytes():
    latent = torch.randn(2, 3, 576)
    stored = fp8_latent.quantize(latent, DV)
    assert stored.dtype == torch.uint8 and stored.shape == (2, 3, 656)
    assert fp8_latent.token_bytes(512, 64) == 656
    groups = latent[..., :512].reshape(2, 3, 4, 128)
    scales = stored[..., 512:528].contiguous().view(torch.float32)
    exact = groups.abs().amax(dim=-1) * (1 / 448)
    assert torch.equal(scales, fp8_latent.round_up_to_bf16(exact))
    assert torch.equal(scales, scales.to(torch.bfloat16).float()) and (scales >= exact).all()
    assert (scales <= exact * (1 + 2 ** -7)).all()
    assert torch.equal(stored[..., 528:].contiguous().view(torch.bfloat16), latent[..., 512:].to(torch.bfloat16))
    values = stored[..., :512].contiguous().view(torch.float8_e4m3fn).float().reshape(2, 3, 4, 128)
    assert values.abs().amax(dim=-1).eq(448).all()  # each group's largest value maps to e4m3's largest


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_error_within_e4m3_rounding_per_group(dtype):
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(64, 576, generator=generator) * torch.exp(torch.randn(64, 1, generator=generator) * 3)
    latent[3, 128:256] = 0               # a zero group: scale 0, dequantizes to 0
    latent[5, :128] *= 1e-30             # a tiny group
    latent[7, 300] = 1e4                 # one outlier: its group's other values go subnormal
    latent = latent.to(dtype)
    back = fp8_latent.dequantize(fp8_latent.quantize(latent, DV), DV)
    x = latent.float()
    groups = x[:, :512].reshape(64, 4, 128)
    scale = fp8_latent.round_up_to_bf16(groups.abs().amax(dim=-1, keepdim=True) * (1 / 448))
    error = (back[:, :512].reshape(64, 4, 128) - groups).abs()
    # e4m3: 3 mantissa bits, so a normal value rounds within 2^-4 of itself; below 2^-6 (subnormal) the step is 2^-9.
    bound = torch.maximum(groups.abs() * 2 ** -4, scale * 2 ** -10) * (1 + 1e-6)
    assert torch.all(error <= bound)
    assert torch.all(back[3, 128:256] == 0)
    assert torch.equal(back[:, 512:], x[:, 512:].to(torch.bfloat16).float())
    assert torch.isfinite(back).all()
    relative = (error.norm(dim=-1) / groups.norm(dim=-1).clamp_min(1e-38))
    assert relative.max() < 0.05


def test_round_trip_keeps_nan_in_its_group_only():
    latent = torch.randn(2, 576)
    latent[0, 130] = float("nan")
    back = fp8_latent.dequantize(fp8_latent.quantize(latent, DV), DV)
    assert torch.isnan(back[0, 128:256]).all()
    assert torch.isfinite(back[0, :128]).all() and torch.isfinite(back[0, 256:]).all() and torch.isfinite(back[1]).all()


def test_scales_round_up_to_bf16_values():
    """Exact values stay, others go to the next bf16 value up (subnormals too); zero, infinity and NaN (any payload)
    stay what they are."""
    bits = torch.tensor([0x3F800000, 0x3F800001, 0x3F80FFFF, 0x3F81_0000, 0x00000001, 0x007FFFFF, 0x00000000,
                         0x7F800000, 0x7FC00000, 0x7FFFFFFF, 0x7F7F0001], dtype=torch.int32)
    up = fp8_latent.round_up_to_bf16(bits.view(torch.float32)).view(torch.int32)
    expected = [0x3F800000, 0x3F810000, 0x3F810000, 0x3F810000, 0x00010000, 0x00800000, 0x00000000, 0x7F800000]
    assert up[:8].tolist() == expected
    assert up[8:10].view(torch.float32).isnan().all()
    assert up[10].item() == 0x7F800000  # above bf16's largest finite value: infinity, as rounding up must give


def test_quantize_stays_on_the_device_without_sync():
    """Pure tensor ops: the same code under torch.compile's fake tensors would fail on a host read; here: meta."""
    latent = torch.empty(3, 4, 576, device="meta")
    assert fp8_latent.quantize(latent, DV).shape == (3, 4, 656)


# -------------------------------------------------------------------------------------------- reference
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("causal", [True, False])
def test_reference_fp8_equals_reference_on_dequantized_keys(dtype, causal):
    """The reference reads an FP8 cache as a cache of q's dtype holding float(e4m3) * scale rounded to that dtype."""
    inputs = fp8_inputs([0, 70, 200, 1], 2, 16, dtype=dtype, seed=3)
    out, lse = reference(inputs, causal)
    dequantized = fp8_latent.dequantize(inputs.k_cache, DV, dtype)
    plain_out, plain_lse = mla_decode_reference(inputs.q, dequantized, inputs.block_table, inputs.cache_seqlens, DV,
                                                SCALE, causal)
    assert torch.equal(out, plain_out) and torch.equal(lse, plain_lse)
    dense_out, dense_lse = dense_attention(inputs.q, dequantized, inputs.block_table, inputs.cache_seqlens, DV, SCALE,
                                           causal)
    seen = torch.isfinite(dense_lse)
    assert torch.allclose(lse[seen].double(), dense_lse[seen], atol=1e-4)
    assert relative_error(out, dense_out) < (1e-2 if dtype == torch.bfloat16 else 1e-5)


def test_reference_fp8_error_against_the_bf16_cache_is_bounded():
    """Kernel-level accuracy of the FP8 cache on random inputs (standard normal keys): the FP8 reference against the
    float32 reference on the bf16 cache it was quantized from (the figure is in docs/kernel-design.md)."""
    inputs = make_paged_inputs([300, 1000, 64, 4096], 1, 16, dtype=torch.bfloat16, seed=5)
    fp8_cache = fp8_latent.quantize(inputs.k_cache, DV)
    q = inputs.q
    out_bf16, lse_bf16 = mla_decode_reference(q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, DV, SCALE,
                                              True)
    out_fp8, lse_fp8 = mla_decode_reference(q, fp8_cache, inputs.block_table, inputs.cache_seqlens, DV, SCALE, True,
                                            is_fp8_kvcache=True)
    assert relative_error(out_fp8, out_bf16) < 0.06
    assert (lse_fp8 - lse_bf16).abs().max() < 0.05


def test_float8_typed_cache_reads_like_bytes():
    inputs = fp8_inputs([70, 130], 1, 16, seed=2)
    out, lse = reference(inputs, True)
    typed = inputs.k_cache.view(torch.float8_e4m3fn)
    out2, lse2 = hf_flashmla.flash_mla_with_kvcache(inputs.q, typed, inputs.block_table, inputs.cache_seqlens, DV,
                                                    hf_flashmla.get_mla_metadata()[0], None, causal=True,
                                                    is_fp8_kvcache=True)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


# ------------------------------------------------------------------------------------------- bad input
def _call(q, k_cache, inputs, **kwargs):
    metadata, splits = hf_flashmla.get_mla_metadata(inputs.cache_seqlens, q.shape[1] * q.shape[2], 1)
    return hf_flashmla.flash_mla_with_kvcache(q, k_cache, inputs.block_table, inputs.cache_seqlens, DV, metadata,
                                              splits, causal=True, **kwargs)


def test_fp16_q_with_an_fp8_cache_is_refused():
    inputs = fp8_inputs([70], 1, 16)
    with pytest.raises(TypeError, match=r"^q: expected dtype bfloat16 or float32 with is_fp8_kvcache=True"):
        _call(inputs.q.to(torch.float16), inputs.k_cache, inputs, is_fp8_kvcache=True)


@pytest.mark.parametrize("width", [576, 655, 1152])
def test_wrong_byte_width_is_refused(width):
    inputs = fp8_inputs([70], 1, 16)
    k_cache = torch.zeros(inputs.k_cache.shape[:-1] + (width,), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"^k_cache: expected 656 bytes per token"):
        _call(inputs.q, k_cache, inputs, is_fp8_kvcache=True)


def test_bf16_cache_flagged_fp8_is_refused():
    inputs = make_paged_inputs([70], 1, 16)
    with pytest.raises(TypeError, match=r"^k_cache: expected dtype uint8 or float8_e4m3fn with is_fp8_kvcache=True"):
        _call(inputs.q, inputs.k_cache, inputs, is_fp8_kvcache=True)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float8_e4m3fn])
def test_fp8_cache_without_the_flag_is_refused(dtype):
    inputs = fp8_inputs([70], 1, 16)
    with pytest.raises(TypeError, match=r"^k_cache: .*needs is_fp8_kvcache=True"):
        _call(inputs.q, inputs.k_cache.view(dtype), inputs)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_is_fp8_kvcache_must_be_a_bool(value):
    inputs = fp8_inputs([70], 1, 16)
    with pytest.raises(TypeError, match=r"^is_fp8_kvcache: expected a bool"):
        _call(inputs.q, inputs.k_cache, inputs, is_fp8_kvcache=value)


def test_q_head_dim_checked_with_an_fp8_cache():
    inputs = fp8_inputs([70], 1, 16)
    with pytest.raises(ValueError, match=r"^q: expected head_dim"):
        _call(inputs.q[..., :512].contiguous(), inputs.k_cache, inputs, is_fp8_kvcache=True)


def test_forcing_the_sm90_kernel_for_fp8_needs_an_extension_with_the_fp8_feed(monkeypatch):
    monkeypatch.setenv(BACKEND.name, "cuda_sm90")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(hf_flashmla._ops, "extension_available", lambda: True)
    monkeypatch.setattr(hf_flashmla._ops, "fp8_kernel_available", lambda: False)
    cuda = torch.device("cuda", 0)
    assert hf_flashmla.backend(cuda).name == "cuda_sm90"
    with pytest.raises(RuntimeError, match="FP8.*rebuild"):
        hf_flashmla.backend(cuda, is_fp8_kvcache=True)
    monkeypatch.setattr(hf_flashmla._ops, "fp8_kernel_available", lambda: True)
    monkeypatch.setattr(dispatch, "_CHOICES", {})
    assert hf_flashmla.backend(cuda, is_fp8_kvcache=True).name == "cuda_sm90"


@pytest.mark.parametrize("fp8_feed_built", [True, False])
def test_dispatch_sends_fp8_to_the_sm90_kernel_where_it_reads_fp8(monkeypatch, fp8_feed_built):
    monkeypatch.delenv(BACKEND.name, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(hf_flashmla._ops, "extension_available", lambda: True)
    monkeypatch.setattr(hf_flashmla._ops, "fp8_kernel_available", lambda: fp8_feed_built)
    monkeypatch.setattr(dispatch, "triton_import_error", lambda: None)
    cuda = torch.device("cuda", 0)
    assert hf_flashmla.backend(cuda).name == "cuda_sm90"
    choice = hf_flashmla.backend(cuda, is_fp8_kvcache=True)
    if fp8_feed_built:
        assert choice.name == "cuda_sm90"
    else:
        assert choice.name == "triton" and "FP8" in choice.reason
    assert hf_flashmla.backend("cpu", is_fp8_kvcache=True).name == "reference"


# ---------------------------------------------------------------------------------- Triton (interpreter)
@pytest.fixture(scope="module")
def interpreted():
    module = importlib.import_module("hf_flashmla.triton_decode")
    if not module.INTERPRETED:
        pytest.skip("Triton runs compiled here (CUDA present, TRITON_INTERPRET unset): the triton_gpu tests cover it")
    return module


def assert_matches_reference(out, lse, inputs, causal, expected=None):
    ref_out, ref_lse = expected or reference(inputs, causal)
    out, lse, ref_out, ref_lse = out.cpu(), lse.cpu(), ref_out.cpu(), ref_lse.cpu()
    assert out.dtype == inputs.q.dtype and out.shape == ref_out.shape
    unseen = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse), unseen)
    assert torch.all(out.permute(0, 2, 1, 3)[unseen] == 0)
    assert torch.isfinite(out).all()
    if (~unseen).any():
        assert torch.all((lse - ref_lse)[~unseen].abs() <= LSE_ATOL + LSE_RTOL * ref_lse[~unseen].abs())
        assert relative_error(out, ref_out) < OUT_TOLERANCE[inputs.q.dtype]


# (lengths, s_q, h_q, dtype, causal, num_splits): 16 / 32 / 64-row tiles, empty and partial pages, splits.
INTERPRETER_CASES = [
    ([70], 1, 16, torch.bfloat16, True, None),
    ([0, 300, 64, 1], 2, 16, torch.bfloat16, True, 3),
    ([5, 130], 4, 8, torch.bfloat16, False, 1),
    ([129, 3], 1, 64, torch.float32, True, 2),
]


@pytest.mark.parametrize("lengths,s_q,h_q,dtype,causal,num_splits", INTERPRETER_CASES,
                         ids=[f"L{'-'.join(map(str, c[0]))}_sq{c[1]}_h{c[2]}_{str(c[3])[6:]}_"
                              f"{'causal' if c[4] else 'full'}_splits{c[5]}" for c in INTERPRETER_CASES])
def test_interpreter_fp8_matches_reference(interpreted, lengths, s_q, h_q, dtype, causal, num_splits):
    inputs = fp8_inputs(lengths, s_q, h_q, dtype=dtype, seed=len(lengths) + s_q)
    out, lse = interpreted.mla_decode_triton(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, DV,
                                             SCALE, causal, num_splits=num_splits, is_fp8_kvcache=True)
    assert_matches_reference(out, lse, inputs, causal)


def test_interpreter_fp8_decoded_with_integer_ops_equals_native(interpreted, monkeypatch):
    """Below sm_89 Triton has no e4m3 type: the kernel decodes the bytes itself, to the same values (every byte value
    occurs here: subnormals, NaN excepted by the quantizer, both signs)."""
    inputs = fp8_inputs([130, 64], 1, 16, dtype=torch.float32, seed=4)
    every_byte = torch.arange(256, dtype=torch.uint8)
    every_byte = every_byte[(every_byte & 0x7F) != 0x7F]
    inputs.k_cache[..., :every_byte.numel()] = every_byte
    args = (inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, DV, SCALE, True)
    native = interpreted.mla_decode_triton(*args, num_splits=2, is_fp8_kvcache=True)
    monkeypatch.setattr(interpreted, "_native_fp8", lambda device: False)
    decoded = interpreted.mla_decode_triton(*args, num_splits=2, is_fp8_kvcache=True)
    assert torch.equal(native[0], decoded[0]) and torch.equal(native[1], decoded[1])
    assert_matches_reference(*decoded, inputs, True)


def test_interpreter_fp8_through_the_public_api(interpreted, monkeypatch):
    monkeypatch.setenv(BACKEND.name, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    inputs = fp8_inputs([0, 130, 64], 2, 16, seed=3)
    out, lse = _call(inputs.q, inputs.k_cache, inputs, is_fp8_kvcache=True)
    assert_matches_reference(out, lse, inputs, True)


def test_interpreter_fp8_garbage_past_the_lengths_never_reaches_the_output(interpreted):
    """Bytes that decode as NaN (0x7F) everywhere no sequence reads, scales and rope included."""
    inputs = fp8_inputs([65, 1, 130, 0], 2, 16, seed=9)
    used = used_token_mask(inputs)
    dirty = inputs.k_cache.clone()
    dirty[~used] = 0x7F
    run = [interpreted.mla_decode_triton(inputs.q, cache, inputs.block_table, inputs.cache_seqlens, DV, SCALE, True,
                                         num_splits=2, is_fp8_kvcache=True) for cache in (inputs.k_cache, dirty)]
    assert torch.equal(run[0][0], run[1][0]) and torch.equal(run[0][1], run[1][1])
    out, lse = reference(inputs.__class__(inputs.q, dirty, inputs.block_table, inputs.cache_seqlens), True)
    assert torch.equal(out, reference(inputs, True)[0])


# ------------------------------------------------------------------------------------------------ GPU
GPU_LENGTHS = {"short_varlen": [1, 63, 64, 65, 0, 200, 1000, 4097], "long": [32768, 16384], "one_long": [65536]}
GPU_MATRIX = list(itertools.product(
    ["short_varlen", "long", "one_long"],
    [(1, 16), (2, 16), (1, 20), (1, 32), (1, 64), (1, 128), (2, 64), (4, 128)],   # (s_q, h_q)
    [True, False],                                                          # causal
))


GPU_IDS = [f"{c[0]}_sq{c[1][0]}_h{c[1][1]}_{'causal' if c[2] else 'full'}" for c in GPU_MATRIX]


def poison_unread_bytes(inputs):
    """Bytes that decode as NaN (0x7F) everywhere no sequence reads: latent, scales and rope past each length and in
    unused pages. The output must not change."""
    used = used_token_mask(inputs).to(inputs.k_cache.device)
    inputs.k_cache[~used] = 0x7F


@pytest.mark.gpu
@pytest.mark.parametrize("lengths,shape,causal", GPU_MATRIX, ids=GPU_IDS)
def test_gpu_kernel_fp8_matches_reference(lengths, shape, causal, monkeypatch):
    """The sm_90 kernel (narrow or seesaw FP8 feed by s_q * h_q) through the public API in automatic dispatch, both
    schedule generations."""
    monkeypatch.delenv(BACKEND.name, raising=False)
    _check_gpu_fp8_path(lengths, shape, causal, "cuda_sm90")


@pytest.mark.triton_gpu
@pytest.mark.parametrize("lengths,shape,causal", GPU_MATRIX, ids=GPU_IDS)
def test_gpu_triton_fp8_matches_reference(lengths, shape, causal, monkeypatch):
    """The Triton FP8 kernel (what other GPUs run), forced on this one."""
    monkeypatch.setenv(BACKEND.name, "triton")
    _check_gpu_fp8_path(lengths, shape, causal, "triton")


def _check_gpu_fp8_path(lengths, shape, causal, path):
    s_q, h_q = shape
    _check_on_gpu(fp8_inputs(GPU_LENGTHS[lengths], s_q, h_q, seed=s_q * h_q, device="cuda"), causal, path)


def _check_on_gpu(inputs, causal, path):
    """`path` runs these CUDA inputs through the public API (both schedule generations, unread bytes poisoned) and
    matches the reference."""
    _, s_q, h_q, _ = inputs.q.shape
    assert hf_flashmla.backend(inputs.q, is_fp8_kvcache=True).name == path
    # The narrow sm_90 kernel applies the scales to float32 products: its keys are exact, the reference's for a
    # float32 q. The other paths round each key to bf16, as the reference does for a bf16 q.
    exact = path == "cuda_sm90" and s_q * h_q <= fp8_latent.EXACT_KEYS_MAX_ROWS
    expected = reference(inputs.__class__(inputs.q.float(), inputs.k_cache, inputs.block_table, inputs.cache_seqlens)
                         if exact else inputs, causal)
    poison_unread_bytes(inputs)
    for generation in ("first", "newest"):
        if generation == "first":
            metadata, splits = hf_flashmla.get_mla_metadata(inputs.cache_seqlens, s_q * h_q, 1)
        else:
            metadata, splits = hf_flashmla.get_mla_metadata()[0], None
        out, lse = hf_flashmla.flash_mla_with_kvcache(inputs.q, inputs.k_cache, inputs.block_table,
                                                      inputs.cache_seqlens, DV, metadata, splits, causal=causal,
                                                      is_fp8_kvcache=True)
        torch.cuda.synchronize()
        assert_matches_reference(out, lse, inputs, causal, expected)


# The wide kernel dequantizes with one bf16x2 multiply per two values where a scale is bf16-exact (every scale
# fp8_latent.quantize writes) and in float32 otherwise (a cache written elsewhere); both must give the reference's
# bf16 keys bit for bit. One key per sequence makes each output row that key's value row (P = 1), so the output is the
# dequantized latent itself: here every e4m3 code but NaN, subnormals included, under both kinds of scale.
@pytest.mark.gpu
def test_gpu_wide_kernel_dequantizes_every_code_exactly(monkeypatch):
    monkeypatch.delenv(BACKEND.name, raising=False)
    scales = torch.tensor([[1.0, 2 ** -10 * 1.5, 0.0032501220703125, 200.0],     # bf16-exact: the bf16x2 path
                           [0.1, 300.0, 1e-35, 0.0],                             # float32, >= 2^8, tiny, zero
                           [2 ** -100, 255.0, 0.00390625 * 1.0078125, 2 ** -101],
                           [0.1, 1.0, 0.1, 1.0]], dtype=torch.float32)
    codes = torch.arange(256, dtype=torch.int64)
    codes = codes[(codes & 0x7F) != 0x7F]  # the two NaN codes left out
    b = 8
    inputs = make_paged_inputs([1] * b, 1, 64, dtype=torch.float32, seed=5)
    cache = fp8_latent.quantize(inputs.k_cache, DV)
    for i in range(b):
        row = cache[int(inputs.block_table[i, 0]), 0, 0]
        row[:DV] = codes.roll(37 * i).repeat(3)[:DV].to(torch.uint8)
        row[DV:DV + 16] = scales[i % len(scales)].view(torch.uint8)
    inputs = inputs.__class__(inputs.q.to(torch.bfloat16).cuda(), cache.cuda(), inputs.block_table.cuda(),
                              inputs.cache_seqlens.cuda())
    assert hf_flashmla.backend(inputs.q, is_fp8_kvcache=True).name == "cuda_sm90"
    metadata, splits = hf_flashmla.get_mla_metadata(inputs.cache_seqlens, 64, 1)
    out, _ = hf_flashmla.flash_mla_with_kvcache(inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, DV,
                                                metadata, splits, is_fp8_kvcache=True)
    for i in range(b):
        row = cache[int(inputs.block_table[i, 0]), 0, 0]
        expected = fp8_latent.dequantize(row, DV)[:DV].to(torch.bfloat16)
        assert torch.equal(out[i, 0].cpu(), expected.expand(64, DV)), f"sequence {i}, scales {scales[i % 4]}"


# The kernels' lazy running max per query row (the narrow kernel: per column of S^T) and the narrow kernel's lazy
# largest scale C_b per group move only when a page passes them by a margin, so keys of one scale never take those
# paths after an item's first page. Here the keys grow along each sequence or jump between pages before quantization
# (test_kernel_gpu.test_running_max_jumps does the same for the bf16 cache), so both move mid-item, in split pieces
# too, and the page scales with them.
@pytest.mark.gpu
@pytest.mark.parametrize("pattern", ["ramp", "random"])
@pytest.mark.parametrize("s_q,h_q", [(1, 16), (2, 16), (1, 20), (1, 32), (1, 64)])
def test_gpu_kernel_fp8_running_maxima_jump(pattern, s_q, h_q, monkeypatch):
    monkeypatch.delenv(BACKEND.name, raising=False)
    inputs = make_paged_inputs([4096, 1000, 65, 3000, 130], s_q, h_q, dtype=torch.float32, seed=23)
    generator = torch.Generator().manual_seed(29)
    choices = [0.5, 1.0, 1.25, 1.6, 2.0, 3.0]
    if pattern == "ramp":
        inputs = scale_pages(inputs, lambda i, j: 0.5 + 0.1 * j + 0.05 * i)
    else:
        inputs = scale_pages(inputs, lambda i, j: choices[int(torch.randint(len(choices), (1,), generator=generator))])
    inputs = inputs.__class__(inputs.q.to(torch.bfloat16).cuda(), fp8_latent.quantize(inputs.k_cache, DV).cuda(),
                              inputs.block_table.cuda(), inputs.cache_seqlens.cuda())
    _check_on_gpu(inputs, True, "cuda_sm90")


@pytest.mark.triton_gpu
def test_gpu_fp8_cache_quantized_on_the_device_matches_the_cpu():
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(4, 33, 576, generator=generator).to(torch.bfloat16)
    assert torch.equal(fp8_latent.quantize(latent.cuda(), DV).cpu(), fp8_latent.quantize(latent, DV))


def test_exact_keys_bound_is_the_narrow_kernels_row_count():
    """fp8_latent.EXACT_KEYS_MAX_ROWS (which rule a GPU call's keys follow) is the narrow kernel's widest n, and
    mla_decode_launch sends calls up to it there."""
    root = Path(__file__).resolve().parent.parent / "csrc"
    narrow = (root / "mla_decode_fp8_narrow.cuh").read_text()
    rows = fp8_latent.EXACT_KEYS_MAX_ROWS
    assert f"using NarrowShape{rows} = NarrowShape<{rows}," in narrow
    assert f"rows <= decode_detail::fp8_narrow::NarrowShape{rows}::kRows" in (root / "mla_decode_kernel.cu").read_text()


def test_the_cache_writes_fp8_rows_with_torch_ops_off_the_kernels_device():
    cache = LatentPagedCache(num_hidden_layers=1, latent_dim=576, kv_cache_dtype="fp8_e4m3")
    assert not cache._fused_fp8_write(torch.zeros(2, 576))


# -------------------------------------------------------------------------------- the fused FP8 write (sm_90)
def _fused_write_or_skip():
    if not torch.cuda.is_available() or not _ops.fp8_write_kernel_available():
        pytest.skip("needs the compiled extension with fp8_latent_write and a CUDA device")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_fused_fp8_write_is_quantize_byte_for_byte(dtype):
    """One kernel gives the bytes of fp8_latent.quantize + index_copy_: scales spread over 10^±4, a zero group,
    subnormal and huge values; slots outside the pool are skipped and nothing else is touched."""
    _fused_write_or_skip()
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(37, 576, generator=generator) * torch.exp(torch.randn(37, 1, generator=generator) * 3)
    latent[3, :128] = 0
    latent[5, 200:210] = 3e-39 if dtype == torch.float32 else 1e-7
    latent[7, 300] = 6e4
    latent = latent.to(dtype).cuda()
    pool = torch.full((100, 656), 0xAB, dtype=torch.uint8, device="cuda")
    slots = torch.randperm(100, generator=generator)[:37].cuda()
    slots[10], slots[11] = -1, 100
    keep = (slots >= 0) & (slots < 100)
    expected = pool.clone()
    expected[slots[keep]] = fp8_latent.quantize(latent[keep], DV)
    _ops.fp8_latent_write(pool, slots, latent)
    torch.cuda.synchronize()
    assert torch.equal(pool, expected)


@pytest.mark.gpu
def test_gpu_fused_fp8_write_keeps_nan_in_its_group():
    _fused_write_or_skip()
    latent = torch.randn(4, 576, device="cuda", dtype=torch.bfloat16)
    latent[1, 130] = float("nan")
    pool = torch.zeros(4, 656, dtype=torch.uint8, device="cuda")
    _ops.fp8_latent_write(pool, torch.arange(4, device="cuda"), latent)
    got = fp8_latent.dequantize(pool, DV)
    want = fp8_latent.dequantize(fp8_latent.quantize(latent, DV), DV)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan()[1, 128:256].all() and not got[0].isnan().any()
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["pool_width", "pool_dtype", "latent_width", "latent_dtype", "slots_dtype",
                                  "slots_length"])
def test_gpu_fused_fp8_write_rejects_bad_input_naming_it(case):
    _fused_write_or_skip()
    pool = torch.zeros(8, 656, dtype=torch.uint8, device="cuda")
    latent = torch.randn(2, 576, device="cuda", dtype=torch.bfloat16)
    slots = torch.arange(2, device="cuda")
    name = case.split("_")[0]
    if case == "pool_width":
        pool = torch.zeros(8, 576, dtype=torch.uint8, device="cuda")
    elif case == "pool_dtype":
        pool = torch.zeros(8, 656, dtype=torch.int8, device="cuda")
    elif case == "latent_width":
        latent = torch.randn(2, 512, device="cuda", dtype=torch.bfloat16)
    elif case == "latent_dtype":
        latent = latent.to(torch.float64)
    elif case == "slots_dtype":
        slots = slots.to(torch.int32)
    else:
        slots = torch.arange(3, device="cuda")
    before = pool.clone()
    with pytest.raises(ValueError, match=name):
        _ops.fp8_latent_write(pool, slots, latent)
    assert torch.equal(pool, before)
