// The FP8 cache's write: latent rows quantized into FlashMLA's 656-byte layout (hf_flashmla/fp8_latent.py) and stored
// in their pool slots by one kernel. fp8_latent.quantize followed by index_copy_ is a dozen small kernels per layer
// and decode step, which cost more than the FP8 attention saves; this one is the same bytes in one launch.
//
// One warp per row. Lane l quantizes latent values 16l .. 16l + 15 (scale group l / 8: the group's amax is a max over
// its 8 lanes); lanes 0..7 convert the 64 rope values to bf16, 8 each. Every float operation is IEEE
// round-to-nearest with subnormals kept (inline PTX without .ftz: the extension builds with --use_fast_math), in the
// order quantize uses: scale = amax * (1 / 448), rounded up to a bf16 value; value = x / (scale > 0 ? scale : 1),
// clamped to [-448, 448] (NaN kept), rounded to e4m3; NaN in a group makes its amax, so its scale, NaN (torch's amax
// propagates NaN).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "fp8_latent_write.h"

namespace hf_flashmla {
namespace {

constexpr int kRank = 512, kRope = 64, kRowValues = kRank + kRope, kRowBytes = 656;
constexpr int kScaleOffset = kRank, kRopeOffset = kRank + 16;
constexpr int kWarpsPerBlock = 4;
constexpr uint32_t kInv448Bits = 0x3b124925;  // float32(1 / 448), as torch multiplies by it

__device__ __forceinline__ float mul_rn(float a, float b) {
  float d;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
}
__device__ __forceinline__ float div_rn(float a, float b) {
  float d;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
}
__device__ __forceinline__ float max_nan(float a, float b) {  // NaN if either is NaN, as torch.amax
  float d;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(d) : "f"(a), "f"(b));
  return d;
}
__device__ __forceinline__ bool is_nan(float x) { return (__float_as_uint(x) & 0x7fffffffu) > 0x7f800000u; }

// x >= 0 (or NaN, kept) rounded up to a bfloat16 value, as fp8_latent.round_up_to_bf16.
__device__ __forceinline__ float round_up_to_bf16(float x) {
  return is_nan(x) ? x : __uint_as_float((__float_as_uint(x) + 0xffffu) & 0xffff0000u);
}

// Two floats as e4m3 bytes, lo in the lower byte.
__device__ __forceinline__ uint32_t e4m3x2(float lo, float hi) {
  uint16_t d;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(d) : "f"(hi), "f"(lo));
  return d;
}

__device__ __forceinline__ float2 to_float2(__nv_bfloat162 v) { return __bfloat1622float2(v); }
__device__ __forceinline__ float2 to_float2(__half2 v) { return __half22float2(v); }

// 8 consecutive values as float: one 16-byte load for bf16 / fp16, two for float32.
template <typename T>
__device__ __forceinline__ void load8(const T* src, float (&v)[8]) {
  using Pair = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;
  const uint4 u = *reinterpret_cast<const uint4*>(src);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = to_float2(*reinterpret_cast<const Pair*>(&w[i]));
    v[2 * i] = f.x;
    v[2 * i + 1] = f.y;
  }
}
template <>
__device__ __forceinline__ void load8<float>(const float* src, float (&v)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(src), b = *reinterpret_cast<const float4*>(src + 4);
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

__device__ __forceinline__ uint32_t bf16x2_bits(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) fp8_latent_write_kernel(const Fp8LatentWriteParams p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= p.n) return;
  const int64_t slot = p.slots[row];
  if (slot < 0 || slot >= p.num_rows) return;  // never outside the pool (the whole warp leaves together)
  const T* src = static_cast<const T*>(p.latent) + row * kRowValues;
  uint8_t* dst = p.pool + slot * kRowBytes;

  float v[16];
  load8<T>(src + 16 * lane, *reinterpret_cast<float(*)[8]>(v));
  load8<T>(src + 16 * lane + 8, *reinterpret_cast<float(*)[8]>(v + 8));
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < 16; ++i) amax = max_nan(amax, fabsf(v[i]));
#pragma unroll
  for (int mask = 1; mask < 8; mask *= 2) amax = max_nan(amax, __shfl_xor_sync(0xffffffff, amax, mask));
  const float scale = round_up_to_bf16(mul_rn(amax, __uint_as_float(kInv448Bits)));
  const float divisor = scale > 0.f ? scale : 1.f;  // a zero group keeps scale 0; NaN > 0 is false, as in torch
  uint32_t bytes[4];
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    float x[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      x[j] = div_rn(v[4 * w + j], divisor);
      if (!is_nan(x[j])) x[j] = fminf(fmaxf(x[j], -448.f), 448.f);
    }
    bytes[w] = e4m3x2(x[0], x[1]) | (e4m3x2(x[2], x[3]) << 16);
  }
  *reinterpret_cast<uint4*>(dst + 16 * lane) = make_uint4(bytes[0], bytes[1], bytes[2], bytes[3]);
  if (lane % 8 == 0) *reinterpret_cast<float*>(dst + kScaleOffset + 4 * (lane / 8)) = scale;
  if (lane < kRope / 8) {
    float r[8];
    load8<T>(src + kRank + 8 * lane, r);
    *reinterpret_cast<uint4*>(dst + kRopeOffset + 16 * lane) =
        make_uint4(bf16x2_bits(r[0], r[1]), bf16x2_bits(r[2], r[3]), bf16x2_bits(r[4], r[5]), bf16x2_bits(r[6], r[7]));
  }
}

}  // namespace

const char* fp8_latent_write_launch(const Fp8LatentWriteParams& p, cudaStream_t stream) {
  if (p.n == 0) return nullptr;
  const dim3 grid(static_cast<unsigned>((p.n + kWarpsPerBlock - 1) / kWarpsPerBlock)), block(kWarpsPerBlock * 32);
  switch (p.latent_dtype) {
    case 0: fp8_latent_write_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(p); break;
    case 1: fp8_latent_write_kernel<__half><<<grid, block, 0, stream>>>(p); break;
    case 2: fp8_latent_write_kernel<float><<<grid, block, 0, stream>>>(p); break;
    default: return "fp8_latent_write: latent dtype must be bf16, fp16 or float32";
  }
  const cudaError_t error = cudaPeekAtLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

}  // namespace hf_flashmla
