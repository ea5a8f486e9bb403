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
//  2. The producer warpgroup's 128 threads dequantise. Thread (token t, half h) turns columns 64h .. 64h + 63 of
//     raw group g of token t into chunk 2g + h: float(e4m3) * scale in float32, rounded to bf16, the rule of the
//     reference (hf_flashmla/fp8_latent.py), so the kernel reads the same keys the reference does. A warp's lanes
//     are 32 consecutive tokens of one half: its 16-byte loads and stores hit 8 distinct 16-byte bank groups per
//     8 lanes in the swizzled layouts (no bank conflicts).
//  3. Groups go in order 0..3. Groups 2 and 3 are written over the raw bytes of groups 0..3, so a barrier of the
//     128 threads separates every read of a raw group from any write over it; group 3 lies under its own output,
//     so its two halves take turns (fp8_finish_page). Chunks 0..3 are published (kv_full(stage, 0)) before
//     chunks 4..7 (kv_full(stage, 4)), and the consumers' Q K^T walks the chunks in that order (seesaw_chunk).
// The scales (16 bytes per token) are loaded by each thread from global memory into registers, before it waits
// for the raw bytes: the stages, Q and P fill the shared memory, and 16 bytes per thread need no staging.
// Shared-memory writes by threads that wgmma then reads (the async proxy) are fenced with fence.proxy.async
// before the barrier that precedes the mbarrier arrive.
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
constexpr uint32_t kBarFp8Feed = 4;                              // named barrier of the producer warpgroup
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
__device__ __forceinline__ void dequantize_16(const uint32_t (&raw)[4], float scale, uint32_t (&out)[8]) {
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    const float2 lo = e4m3x2_to_float2(raw[w]);
    const float2 hi = e4m3x2_to_float2(raw[w] >> 16);
    out[2 * w] = ElemTraits<__nv_bfloat16>::pack(lo.x * scale, lo.y * scale);
    out[2 * w + 1] = ElemTraits<__nv_bfloat16>::pack(hi.x * scale, hi.y * scale);
  }
}

// The producer warpgroup's thread as the dequantiser of (token, half); the warpgroup's first thread also issues
// the loads (issuer).
struct Fp8FeedThread {
  int token, half;
  bool issuer;
  __device__ Fp8FeedThread() {
    const int i = static_cast<int>(threadIdx.x) - kConsumerThreads;
    token = i % kTileRows;
    half = i / kTileRows;  // warp-uniform: warps 0, 1 take half 0
    issuer = i == 0;
  }
};

// Raw group g of this thread's token into chunk 2g + half (units read in pairs, each pair before its outputs are
// written: where group 3's output lies over its own raw bytes, a thread's writes never reach a unit it has yet to
// read). Which writes may lie over other threads' raw bytes, fp8_finish_page orders by barriers.
__device__ __forceinline__ void fp8_dequantize_group(uint32_t stage_addr, const Fp8FeedThread& t, int g,
                                                     float scale) {
  // The row offsets are recomputed per group from a value ptxas cannot hoist: kept live across the page loop they
  // were a dozen registers more than the producer's 56 (spills).
  uint32_t token, half;
  asm volatile("mov.b32 %0, %1;" : "=r"(token) : "r"(t.token));
  asm volatile("mov.b32 %0, %1;" : "=r"(half) : "r"(t.half));
  const uint32_t raw_group = stage_addr + (kFp8RawChunk + g) * kChunkBytes;
  const uint32_t chunk = stage_addr + (2 * g + half) * kChunkBytes;
  // Two units' loads at a time, then their conversions and stores: a shared load may not pass an earlier store, so
  // one unit at a time waited out each load's latency between two stores (all four at once spill the producer).
#pragma unroll
  for (int u0 = 0; u0 < 4; u0 += 2) {
    uint32_t raw[2][4];
#pragma unroll
    for (int u = 0; u < 2; ++u) ld_shared_v4(raw_group + swizzle_128b_offset(token, 4 * half + u0 + u), raw[u]);
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      uint32_t out[8];
      dequantize_16(raw[u], scale, out);
      st_shared_v4(chunk + swizzle_128b_offset(token, 2 * (u0 + u)), out[0], out[1], out[2], out[3]);
      st_shared_v4(chunk + swizzle_128b_offset(token, 2 * (u0 + u) + 1), out[4], out[5], out[6], out[7]);
    }
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
  tma_load_4d(stage_addr + kFp8RawChunk * kChunkBytes, raw_map, bars.raw_full(stage), 0, -shift, page, 0);
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
    tma_load_3d(stage_addr + 8 * kChunkBytes, rope_map, bars.kv_full(stage, 8), 0, -shift, page);
  }
  // The token of the page in this thread's row; rows before the shift and pages outside the pool hold zeros.
  const int token = t.token - shift;
  float4 scales = make_float4(0.f, 0.f, 0.f, 0.f);
  if (token >= 0 && page >= 0 && page < p.num_blocks)
    scales = __ldg(reinterpret_cast<const float4*>(static_cast<const uint8_t*>(p.k_cache) +
                                                   static_cast<int64_t>(page) * kFp8PageBytes +
                                                   token * kFp8TokenBytes + kFp8ScaleOffset));
  mbarrier_wait(bars.kv_empty(stage, 1), free_parity);  // chunks 0..3 are free to write
  mbarrier_wait(bars.raw_full(stage), uses & 1);
  __syncwarp();
  fp8_dequantize_group(stage_addr, t, 0, scales.x);
  fp8_dequantize_group(stage_addr, t, 1, scales.y);
  fence_proxy_async_smem();
  named_barrier_sync(kBarFp8Feed, kProducerThreads);  // raw groups 0, 1 read by all: group 2 writes over them
  if (t.issuer) mbarrier_arrive(bars.kv_full(stage, 0));
  fp8_dequantize_group(stage_addr, t, 2, scales.z);
  // Group 3 writes chunks 6 and 7: over raw group 2, which both halves of each token read (in two warps), and over its
  // own raw bytes, which half 1 writes where half 0 reads them (units 0..3 of a row of chunk 7). Holding those units
  // in registers takes 16 more than the producer's 56 (spills), so the halves take turns: a barrier after every read
  // of group 2, then half 0 streams its part into chunk 6 and meets half 1 at a barrier, after which half 1 streams
  // into chunk 7 (its own reads of units 4..7 come before each of its writes over them). Both sides sync (the
  // kernels have no bar.arrive, ptx_helpers.cuh).
  named_barrier_sync(kBarFp8Feed, kProducerThreads);
  if (t.half == 0) {
    fp8_dequantize_group(stage_addr, t, 3, scales.w);
    named_barrier_sync(kBarFp8Feed, kProducerThreads);  // half 1 waits here for these reads
  } else {
    named_barrier_sync(kBarFp8Feed, kProducerThreads);
    fp8_dequantize_group(stage_addr, t, 3, scales.w);
  }
  fence_proxy_async_smem();
  named_barrier_sync(kBarFp8Feed, kProducerThreads);
  if (t.issuer) mbarrier_arrive(bars.kv_full(stage, 4));
}

}  // namespace decode_detail
}  // namespace hf_flashmla
