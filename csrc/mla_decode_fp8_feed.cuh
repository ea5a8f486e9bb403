// The FP8 page feed of the decode kernel (mla_decode_seesaw.cuh, kFp8 = true): pages in FlashMLA's FP8 latent
// layout (hf_flashmla/fp8_latent.py: per token 512 e4m3 values, 4 float32 scales, one per 128 of them, and the 64
// rope values in bf16 = 656 bytes) become the same bf16 stage that a bf16 cache's TMA boxes fill, so everything
// after the feed (Q K^T, softmax, P V, the split-KV schedule and the combine) is the bf16 kernel's.
//
// Per page, in its stage (72 KB: 9 chunks of 64 columns x 64 tokens, 128B-swizzled):
//  1. The first producer thread loads the 512 latent bytes of the page's 64 tokens (32 KB, one TMA box of 4 groups
//     of 128 columns x 64 tokens, 128B-swizzled) into chunks 4..7, the group of the stage that the consumers free
//     first (raw group g in chunk 4 + g), as soon as they are free (fp8_start_page: both pages of a pair go out
//     before the first converts), then the bf16 rope values straight into chunk 8 (one TMA box, no conversion).
//     Both start at token -shift on the last page of a sequence, as the bf16 boxes do (page_tail_shift): rows
//     before the page's token 0 are zeros, never bits past the length.
//  2. The producer warpgroup's 128 threads dequantise, two per token (Fp8FeedThread): each turns half of every raw
//     group g of its token into chunks 2g, 2g + 1: float(e4m3) * scale in float32, rounded to bf16, the rule of the
//     reference (hf_flashmla/fp8_latent.py), so the kernel reads the same keys the reference does.
//  3. Groups go in order 0..3. Groups 2 and 3 are written over the raw bytes of groups 0..3, but only over the same
//     token's row, which only the token's two lanes read: __syncwarp orders every read of a raw group before any
//     write over it (fp8_dequantize_group), and each warp publishes its rows, chunks 0..3 (kv_full(stage, 0))
//     before chunks 4..7 (kv_full(stage, 4)); the consumers' Q K^T walks the chunks in that order (seesaw_chunk).
// The scales (16 bytes per token) are loaded by each thread from global memory into registers, before it waits
// for the raw bytes: the stages, Q and P fill the shared memory, and 16 bytes per thread need no staging.
// Shared-memory writes by threads that wgmma then reads (the async proxy) are fenced with fence.proxy.async
// before the __syncwarp that precedes the warp's mbarrier arrive.
#pragma once
#include "mla_decode_common.cuh"

namespace hf_flashmla {
namespace decode_detail {

constexpr int kFp8TokenBytes = 656;                              // 512 e4m3 + 4 x 4 scale bytes + 64 x 2 rope bytes
constexpr int kFp8PageBytes = kPageSize * kFp8TokenBytes;        // 41984
constexpr int kFp8GroupCols = 128;                               // latent values per scale
constexpr int kFp8Groups = kHeadDimV / kFp8GroupCols;            // 4
constexpr int kFp8ScaleOffset = kHeadDimV;                       // byte 512 of a token: its 4 float32 scales
constexpr int kFp8RopeOffset = kHeadDimV + 4 * kFp8Groups;       // byte 528: its 64 bf16 rope values
constexpr int kFp8LatentBoxBytes = kTileRows * kHeadDimV;        // 32768: one page's latent bytes
constexpr int kFp8RawChunk = 4;                                  // raw group g lands in chunk 4 + g
constexpr int kProducerThreads = kThreads - kConsumerThreads;    // 128
static_assert(kFp8RawChunk * kChunkBytes + kFp8LatentBoxBytes == 8 * kChunkBytes,
              "the raw latent must fill chunks 4..7 exactly (the stage group freed first)");

__device__ __forceinline__ void ld_shared_v4(uint32_t addr, uint32_t (&v)[4]) {
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void st_shared_v4(uint32_t addr, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}

// Two e4m3 values (low byte first) as two halves (exact: every e4m3 value is a half).
__device__ __forceinline__ float2 e4m3x2_to_float2(uint32_t two) {
  uint32_t h2;
  asm("{\n .reg .b16 r;\n cvt.u16.u32 r, %1;\n cvt.rn.f16x2.e4m3x2 %0, r;\n}" : "=r"(h2) : "r"(two));
  return __half22float2(*reinterpret_cast<const __half2*>(&h2));
}

// 16 e4m3 values (a 16-byte unit, column order) times `scale` as 16 bf16: out[0..3] columns 0..7, out[4..7] 8..15.
// The general rule, in float32: any scale (fp8_scale_is_bf16_exact says when the bf16x2 form below applies).
__device__ __forceinline__ void dequantize_16(const uint32_t (&raw)[4], float scale, uint32_t (&out)[8]) {
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    const float2 lo = e4m3x2_to_float2(raw[w]);
    const float2 hi = e4m3x2_to_float2(raw[w] >> 16);
    out[2 * w] = ElemTraits<__nv_bfloat16>::pack(lo.x * scale, lo.y * scale);
    out[2 * w + 1] = ElemTraits<__nv_bfloat16>::pack(hi.x * scale, hi.y * scale);
  }
}

// Bytes 2k, 2k + 1 of `word` (two e4m3 values) as bf16x2 holding each value times 2^-120: the e4m3 sign goes to
// bf16's sign bit and its 7 exponent and mantissa bits to bf16's lowest 4 exponent and top 3 mantissa bits, which
// reads as the value times 2^(7 - 127), subnormals included (below their smallest normal both formats are the
// mantissa times the same power of two). prmt puts each byte in a 16-bit lane with its sign replicated above it.
template <int k>
__device__ __forceinline__ uint32_t e4m3x2_to_scaled_bf16x2(uint32_t word) {
  uint32_t lanes;
  asm("prmt.b32 %0, %1, 0, %2;" : "=r"(lanes) : "r"(word), "n"(k == 0 ? 0x9180 : 0xB3A2));
  return (lanes << 4) & 0x87F087F0u;
}

__device__ __forceinline__ uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

// The same 16 values by two bf16x2 instructions per pair where the scale is bf16-exact (the quantizer's are:
// hf_flashmla/fp8_latent.py): the product of an e4m3 value (4 significant bits) and such a scale (8) is exact in
// float32, so rounding it once to bf16 (mul.rn.bf16x2) is the general rule's result. The float32 path's conversions
// per pair (e4m3 -> f16 -> f32 -> bf16) set the feed's pace (docs/kernel-design.md, "The FP8 latent cache").
__device__ __forceinline__ void dequantize_16_exact_scale(const uint32_t (&raw)[4], uint32_t multiplier,
                                                          uint32_t (&out)[8]) {
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    out[2 * w] = mul_bf16x2(e4m3x2_to_scaled_bf16x2<0>(raw[w]), multiplier);
    out[2 * w + 1] = mul_bf16x2(e4m3x2_to_scaled_bf16x2<1>(raw[w]), multiplier);
  }
}

// Whether dequantize_16_exact_scale gives the general rule's result for this scale: where it is bf16-exact, below 2^8
// (so that its multiplier is finite) and 0 or at least 2^-100 (so that the float32 product is a normal, hence exact,
// number). NaN and infinity take the general path, as may any scale of a cache written elsewhere.
__device__ __forceinline__ bool fp8_scale_is_bf16_exact(float scale) {
  const float magnitude = fabsf(scale);
  return (__float_as_uint(scale) & 0xffffu) == 0 && magnitude < 256.f && (magnitude >= 0x1p-100f || magnitude == 0.f);
}

// Its multiplier: scale * 2^120 (exact, a power-of-two product) in both bf16 halves.
__device__ __forceinline__ uint32_t fp8_scale_multiplier(float scale) {
  const uint32_t half = __float_as_uint(scale * 0x1p120f) >> 16;
  return half | (half << 16);
}

// The producer warpgroup's thread as a dequantiser: each warp takes 16 tokens, lane l token 16 w + l % 16 as half
// l / 16 of its pair of lanes. Every hazard of the in-place conversion lies between the two lanes of one token (one
// row of the stage), so it is ordered by __syncwarp, and the four warps never wait for each other. The warpgroup's
// first thread also issues the loads (issuer); each warp's first lane publishes its rows.
// Its token and half are read from %tid when needed, not kept: live across the page loop they spilled the
// producer's 56 registers.
struct Fp8FeedThread {
  bool issuer;
  __device__ Fp8FeedThread() : issuer(threadIdx.x == kConsumerThreads) {}
  __device__ static uint32_t producer_index() {
    uint32_t tid;
    asm volatile("mov.u32 %0, %%tid.x;" : "=r"(tid));
    return tid - kConsumerThreads;
  }
  __device__ static int token() {
    const uint32_t i = producer_index();
    return static_cast<int>(16 * (i / 32) + i % 16);
  }
  __device__ static int half() { return static_cast<int>(producer_index() % 32 / 16); }
  __device__ static bool warp_leader() { return producer_index() % 32 == 0; }
};

// Raw group g of this thread's token into chunks 2g, 2g + 1. Step s takes raw units 4s + 2 half, 4s + 2 half + 1
// (values 16 u .. 16 u + 15 of the group each) into chunk 2g + s, units 4 half .. 4 half + 3: in each step the two
// lanes of a token read four adjacent units and write the chunk's whole row. Group 3's step 1 writes chunk 7 over the
// group's own raw units 0..7: both lanes' loads of both steps come before the __syncwarp ahead of those stores. (All
// four loads first, one load latency per group, kept 8 more registers live and spilled the producer's 56.) The
// writes over other groups' raw bytes (group 2 over raw groups 0, 1, group 3's step 0 over raw group 2) follow the
// caller's __syncwarp after those groups. The lanes of a quarter warp are 8 consecutive tokens of one half: their
// 16-byte loads and stores hit 8 distinct 16-byte bank groups in the swizzled layouts.
__device__ __forceinline__ void fp8_dequantize_group(uint32_t stage_addr, int g, float scale) {
  // The row offsets are recomputed per group (from %tid, which ptxas cannot hoist): kept live across the page loop
  // they were a dozen registers more than the producer's 56 (spills).
  const uint32_t token = Fp8FeedThread::token(), half = Fp8FeedThread::half();
  // swizzle_128b_offset(token, unit) = token * 128 + ((unit ^ (token & 7)) << 4); the lane's units differ from the
  // step's by 2 half (loads) or 4 half (stores), bits that the XOR takes in.
  const uint32_t row = stage_addr + token * 128;
  const uint32_t load_key = ((2 * half) ^ (token & 7)) << 4, store_key = ((4 * half) ^ (token & 7)) << 4;
  const uint32_t raw_group = row + (kFp8RawChunk + g) * kChunkBytes;
  auto convert_and_store = [&](auto dequantize) {
#pragma unroll
    for (int step = 0; step < 2; ++step) {
      uint32_t raw[2][4];
#pragma unroll
      for (int u = 0; u < 2; ++u) ld_shared_v4(raw_group + (((4 * step + u) << 4) ^ load_key), raw[u]);
      if (g == 3 && step == 1) __syncwarp();
      const uint32_t chunk = row + (2 * g + step) * kChunkBytes;
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        uint32_t out[8];
        dequantize(raw[u], out);
        st_shared_v4(chunk + (((2 * u) << 4) ^ store_key), out[0], out[1], out[2], out[3]);
        st_shared_v4(chunk + (((2 * u + 1) << 4) ^ store_key), out[4], out[5], out[6], out[7]);
      }
    }
  };
  if (fp8_scale_is_bf16_exact(scale)) {
    const uint32_t multiplier = fp8_scale_multiplier(scale);
    convert_and_store([&](const uint32_t(&r)[4], uint32_t(&out)[8]) { dequantize_16_exact_scale(r, multiplier, out); });
  } else {
    convert_and_store([&](const uint32_t(&r)[4], uint32_t(&out)[8]) { dequantize_16(r, scale, out); });
  }
}

// The raw latent bytes of one FP8 page into chunks 4..7 of stage `stage` (the issuer only), as soon as the consumers
// have freed them. page: its block id (outside the pool: every value reads as 0, as TMA fills such boxes with
// zeros); shift: page_tail_shift; uses: how many pages this stage held before.
template <class Barriers>
__device__ __forceinline__ void fp8_start_page(const CUtensorMap* raw_map, const Barriers& bars, uint32_t kv_smem,
                                               int stage, int page, int shift, uint32_t uses) {
  const uint32_t stage_addr = kv_smem + stage * kTileBytes;
  mbarrier_wait(bars.kv_empty(stage, 0), (uses & 1) ^ 1);
  mbarrier_arrive_expect_tx(bars.raw_full(stage), kFp8LatentBoxBytes);
  tma_load_4d(stage_addr + kFp8RawChunk * kChunkBytes, raw_map, bars.raw_full(stage), 0, -shift, page, 0,
              l2_evict_first_policy());
}

// The rest of that page (all 128 producer threads; see the file comment): its rope values by TMA into chunk 8, and
// its raw bytes, once landed, dequantized into chunks 0..7.
template <class Barriers>
__device__ __forceinline__ void fp8_finish_page(const MlaDecodeParams& p, const CUtensorMap* rope_map,
                                                const Barriers& bars, const Fp8FeedThread& t, uint32_t kv_smem,
                                                int stage, int page, int shift, uint32_t uses) {
  const uint32_t stage_addr = kv_smem + stage * kTileBytes;
  const uint32_t free_parity = (uses & 1) ^ 1;
  if (t.issuer) {
    mbarrier_wait(bars.kv_empty(stage, 1), free_parity);
    mbarrier_arrive_expect_tx(bars.kv_full(stage, 8), kChunkBytes);
    tma_load_3d(stage_addr + 8 * kChunkBytes, rope_map, bars.kv_full(stage, 8), 0, -shift, page,
                l2_evict_first_policy());
  }
  // The token of the page in this thread's row; rows before the shift and pages outside the pool hold zeros.
  const int token = Fp8FeedThread::token() - shift;
  float4 scales = make_float4(0.f, 0.f, 0.f, 0.f);
  if (token >= 0 && page >= 0 && page < p.num_blocks)
    scales = __ldg(reinterpret_cast<const float4*>(static_cast<const uint8_t*>(p.k_cache) +
                                                   static_cast<int64_t>(page) * kFp8PageBytes +
                                                   token * kFp8TokenBytes + kFp8ScaleOffset));
  mbarrier_wait(bars.kv_empty(stage, 1), free_parity);  // chunks 0..3 are free to write
  mbarrier_wait(bars.raw_full(stage), uses & 1);
  __syncwarp();
  fp8_dequantize_group(stage_addr, 0, scales.x);
  fp8_dequantize_group(stage_addr, 1, scales.y);
  // Each warp publishes its 16 rows (kv_full counts the four warps' arrivals); the __syncwarp also orders both lanes'
  // reads of raw groups 0, 1 before group 2's writes over them.
  fence_proxy_async_smem();
  __syncwarp();
  if (Fp8FeedThread::warp_leader()) mbarrier_arrive(bars.kv_full(stage, 0));
  fp8_dequantize_group(stage_addr, 2, scales.z);
  __syncwarp();  // raw group 2 read by both lanes before group 3's step 0 writes over it
  fp8_dequantize_group(stage_addr, 3, scales.w);
  fence_proxy_async_smem();
  __syncwarp();
  if (Fp8FeedThread::warp_leader()) mbarrier_arrive(bars.kv_full(stage, 4));
}

}  // namespace decode_detail
}  // namespace hf_flashmla
