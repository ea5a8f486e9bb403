// The FP8 decode kernel for few query rows (s_q * h_q <= 32: DeepSeek-V2-Lite, Moonlight, ... at s_q 1 or 2), where
// the seesaw kernel's 64-row tiles are mostly padding and decode is bound by the bytes read. It reads FlashMLA's
// 656-byte FP8 token (hf_flashmla/fp8_latent.py) without ever writing a bf16 copy of a page: the products are
// swapped so that the keys and values are the A operand of wgmma, which may come from registers, and each consumer
// thread dequantizes its share of a page straight from the landed bytes into wgmma fragments.
//
//   S^T = K Q^T   (m64 = the page's 64 tokens, n = 16 or 32 query rows, k = 512 latent + 64 rope values)
//   O^T = V^T P'^T (m64 x 8 = the 512 output values, n, k = the page's 64 tokens)
//
// One CTA per part of the schedule. Two shapes (NarrowShape): n16 with one consumer warpgroup (192 threads: warp 4's
// first lane issues TMA, warp 5 derives each page's C_b), and n32 with two (384 threads: warpgroup 2's first warp
// issues TMA, its second derives C_b), whose accumulators one warpgroup cannot hold (O^T alone would be 128
// registers per thread): warpgroup h then takes scale groups 2h and 2h + 1 (its part of K Q^T and its 256 output
// values) and half of the rope. The softmax of each query column runs in one warpgroup: h owns columns 16h .. 16h + 15,
// adds the other's part of their scores (shared memory, one barrier of both per page), keeps their running maxima and
// sums, and writes P'_b for all four groups for them; the columns' rescale factors and, at the item's end, their sums
// go back through shared memory. (Both running the whole softmax measured 1.10x bf16 against 1.42x; at n16 the
// two-warpgroup form measured 2% slower than one.) Pages land whole in a ring of slots (latent bytes, rope values,
// scales: 41 KB per page; four at n16, three at n32), where the seesaw FP8 feed had two 72 KB bf16 stages and converted
// each page between its landing and its first product.
//
// Numbers. e4m3 -> f16 is exact (cvt.rn.f16x2.e4m3x2, one instruction per two values), so:
//  - K Q^T runs in f16 on the raw e4m3 values, one accumulator per 128-value scale group; the scales are applied to
//    the float32 accumulators (rows = tokens), so the keys are exactly float(e4m3) * scale as the reference reads
//    them (no bf16 rounding of the key). Q's latent part becomes f16 once per item, each row times a power of two
//    that puts its largest |value| in [2^14, 2^15) (exact: bf16 has fewer mantissa bits than f16; 29 binades below
//    the row's largest value are kept), undone on the float32 scores. The rope part stays bf16 (its own m64n16
//    accumulator against the cache's bf16 rope values). (e4m3 x e4m3 wgmma straight on the landed bytes, Q split
//    into two e4m3 parts hi + lo, skips this conversion but not the V side's: no faster at n16, and the tensor
//    cores' FP8 sums cost ~1e-3 of lse against these exact products.)
//  - V^T P'^T: each wgmma's 64 output rows lie in one scale group b, so the group's scale goes into P:
//    P'_b = P * scale(token, b) / C_b in f16, with C_b the group's largest scale seen (lazy, like the row max: it
//    moves when a page's largest scale is above it or below 2^-6 of it), and O_b rescaled by C_b. P' <= 256 (the lazy
//    max's bound); a token whose scale is below ~2^-14 * C_b (a 16000x spread inside one page's group) reaches P' as
//    an f16 subnormal, with fewer bits.
//
// Fragment layouts. wgmma's A fragment for m64k16: warp w, lane (r = lane / 4, q = lane % 4) holds rows 16w + r and
// 16w + r + 8, columns {2q, 2q + 1} and {2q + 8, 2q + 9}. The order of a contraction is free if both operands agree:
//  - K Q^T: k-step 8g + s (group g, s < 8) takes, for lane q, latent bytes 128g + 32q + 4s .. + 3 of its two tokens
//    (as k columns 2q, 2q + 1, 2q + 8, 2q + 9), so one 16-byte shared load gives four steps; Q is written into shared
//    memory in that order. The latent bytes land 128B-swizzled (one 64 x 128 B box per group): a quarter warp reads
//    16-byte units 2q + h of two tokens r, r + 1, distinct after the swizzle (no bank conflict).
//  - V^T P'^T: m-tile j (of 8) row 16w + r + 8i is output value 128 (j / 2) + 4 (8w + r) + 2 (j % 2) + i, so one
//    4-byte load per token gives a lane its values of tiles 2b and 2b + 1; the tokens of k-step s are 16s + {2q, 2q + 1,
//    2q + 8, 2q + 9} (the cache's order); a byte permute pairs two tokens' bytes, then one cvt per two values. The 32
//    lanes' loads hit 32 distinct banks.
//  - P'^T is written by stmatrix .trans from the S^T accumulator (rows = tokens) as [query row][64 tokens] f16,
//    128B-swizzled: the K-major B operand.
// The softmax runs down the columns of S^T (over tokens): a warpgroup's four warps exchange their column maxima
// through shared memory, one barrier per page; at n32 a barrier-reduction per page first tells the warpgroup whether
// any score passes its column's lazy limit, and only then are the maxima exchanged (a page where a running max
// moves: an item's first, rarely another). Another barrier publishes P'.
// The groups' C_b come from a warp of their own (group_scales).
#pragma once
#include "mla_decode_common.cuh"

namespace hf_flashmla {
namespace decode_detail {
namespace fp8_narrow {

constexpr int kGroupBytes = kPageSize * 128;                  // 8192: 128 latent bytes x 64 tokens
constexpr int kLatentBytes = 4 * kGroupBytes;                 // 32768
constexpr int kRopeBytes = kPageSize * 128;                   // 8192: 64 bf16 x 64 tokens
constexpr int kScaleBytes = kPageSize * 16;                   // 1024: 4 float32 x 64 tokens
constexpr int kSlotBytes = kLatentBytes + kRopeBytes + kScaleBytes;  // 41984
constexpr int kWarpgroupThreads = 128;
constexpr int kMaxSmem = 232448;                              // the 227 KB of opt-in shared memory
constexpr int kGroupScaleBytes = 48;                          // a page's C_b, ratio, 1 / C_b: group_scales()
// Named barriers: kBarScores, kBarP and kBarSums of all consumer threads; the others per warpgroup h (id + h).
constexpr uint32_t kBarScores = 1, kBarExchange = 2, kBarP = 4, kBarQ = 6, kBarSums = 8, kBarItemEnd = 10;

// One instance of the kernel: kRows query rows (the n of every wgmma), kWarpgroups consumer warpgroups; and its
// shared memory, in order: Q's B operand (8 latent chunks of k-steps 4c .. 4c + 3, f16, then the rope chunk, bf16;
// kRows x 128 B each, 128B-swizzled), P'_b for the 4 groups (f16, same form), the page slots, the parts of S^T one
// warpgroup adds for the other (two warpgroups: float [2 page parities][2 wg][128 threads][kOwnAcc]), the column-max
// exchange (float [wg][2 parities][4 warps][kRows]), 2^-k per Q row (float [wg][kRows]), the columns' rescale
// factors (float [kRows]), the column sums (float [4 warps][kRows]), each slot's group scales (float [kSlots][3][4]:
// C_b, ratio, 1 / C_b), the mbarriers (full[kSlots], empty[kSlots], scales[kSlots]).
template <int kRowsT, int kWarpgroupsT>
struct NarrowShape {
  static constexpr int kRows = kRowsT;
  static constexpr int kWarpgroups = kWarpgroupsT;
  static constexpr int kGroups = 4 / kWarpgroups;             // scale groups per warpgroup
  static constexpr int kAcc = kRows / 2;                      // floats per thread of an m64 x kRows accumulator
  static constexpr int kCols = kRows / 4;                     // query columns per thread
  // The softmax of each query column runs in one warpgroup: warpgroup h owns columns [16h, 16h + 16), which are its
  // threads' columns kOwnCols h .. and accumulator entries kOwnAcc h .. (8 and 4 in both shapes).
  static constexpr int kOwnAcc = kAcc / kWarpgroups;
  static constexpr int kOwnCols = kCols / kWarpgroups;
  static constexpr int kConsumerThreads = kWarpgroups * kWarpgroupThreads;
  // Whether a page's column maxima are exchanged only when a running max moves (a bar.red.or over the warpgroup
  // decides) rather than on every page. Measured: n32 1.03x (its page loop's common path 16% fewer instructions),
  // n16 0.995x (11% fewer, but its time is not the consumer's instructions and the decision's barrier then costs).
  static constexpr bool kSkipSteadyExchange = kWarpgroups == 2;
  // After the consumers: the producer's warp (its first lane issues TMA), then the scale warp (group_scales);
  // with two consumer warpgroups they are the first two warps of a whole warpgroup (setmaxnreg works per warpgroup).
  static constexpr int kThreads = kConsumerThreads + (kWarpgroups == 1 ? 64 : kWarpgroupThreads);
  static constexpr int kScaleWarp = kConsumerThreads / 32 + 1;
  static constexpr int kOperandBytes = kRows * 128;
  static constexpr int kExchangeFloats = kRows;
  static constexpr int q_latent = 0;
  static constexpr int q_rope = q_latent + 8 * kOperandBytes;
  static constexpr int p = q_rope + kOperandBytes;
  static constexpr int slots = p + 4 * kOperandBytes;
  static constexpr int kScoreBytes = kWarpgroups == 2 ? 2 * kConsumerThreads * kOwnAcc * 4 : 0;
  static constexpr int kTailBytes =
      kScoreBytes + (kWarpgroups * (2 * 4 * kExchangeFloats + kRows) + kRows + 4 * kRows) * 4 +
      (kGroupScaleBytes + 8 * 3) * 4;  // per slot (at most 4): its group scales and three mbarriers
  static constexpr int kSlotsFit = (kMaxSmem - 1024 - slots - kTailBytes) / kSlotBytes;
  static constexpr int kSlots = kSlotsFit < 4 ? kSlotsFit : 4;
  static constexpr int scores = slots + kSlots * kSlotBytes;
  static constexpr int exchange = scores + kScoreBytes;
  static constexpr int q_unscale = exchange + kWarpgroups * 2 * 4 * kExchangeFloats * 4;
  static constexpr int alphas = q_unscale + kWarpgroups * kRows * 4;
  static constexpr int sums = alphas + kRows * 4;
  static constexpr int group_scales = sums + 4 * kRows * 4;  // per slot: C_b, its ratio, 1 / C_b (float4 each)
  static constexpr int barriers = group_scales + kGroupScaleBytes * kSlots;
  static constexpr int total = barriers + 8 * 3 * kSlots;
  static constexpr int kSmemBytes = total + 1024;
  static_assert(slots % 1024 == 0 && kSlotBytes % 1024 == 0, "slots must keep the swizzle atoms aligned");
  static_assert(kSlots >= 2 && kSmemBytes <= kMaxSmem, "the narrow FP8 layout exceeds the opt-in shared memory");
  static_assert(barriers % 8 == 0 && group_scales % 16 == 0, "mbarriers are 8-byte aligned, the group scales 16");
  static __device__ uint32_t full_bar(uint32_t base, int slot) { return base + barriers + 8 * slot; }
  static __device__ uint32_t empty_bar(uint32_t base, int slot) { return base + barriers + 8 * (kSlots + slot); }
  // Completes once the slot's page has its group scales in group_scales (after full_bar).
  static __device__ uint32_t scales_bar(uint32_t base, int slot) { return base + barriers + 8 * (2 * kSlots + slot); }
};
using NarrowShape16 = NarrowShape<16, 1>;
using NarrowShape32 = NarrowShape<32, 2>;

template <int kRows>
__device__ __forceinline__ void mma_f16(float (&d)[kRows / 2], const uint32_t* a, uint64_t b, int scale_d) {
  if constexpr (kRows == 16) wgmma_m64n16k16_rs_f16(d, a[0], a[1], a[2], a[3], b, scale_d);
  else wgmma_m64n32k16_rs_f16(d, a[0], a[1], a[2], a[3], b, scale_d);
}
template <int kRows>
__device__ __forceinline__ void mma_bf16(float (&d)[kRows / 2], const uint32_t* a, uint64_t b, int scale_d) {
  if constexpr (kRows == 16) wgmma_m64n16k16_rs_bf16(d, a[0], a[1], a[2], a[3], b, scale_d);
  else wgmma_m64n32k16_rs_bf16(d, a[0], a[1], a[2], a[3], b, scale_d);
}

// The producer: every page of every item, in order, into slot (page count % kSlots).
template <class S>
__device__ __forceinline__ void produce(const MlaDecodeParams& p, const PartWalker& walker, uint32_t base,
                                        const CUtensorMap* latent_map, const CUtensorMap* rope_map,
                                        const CUtensorMap* scale_map) {
  uint32_t count = 0;
  for (int k = 0; k < walker.num_items(); ++k) {
    const WorkItem w = walker.item(walker.begin_batch + k);
    if (w.stop_block <= w.start_block) continue;
    const int* table_row = p.block_table + static_cast<int64_t>(w.batch) * p.block_table_stride;
    for (int blk = w.start_block; blk < w.stop_block; ++blk, ++count) {
      const int slot = count % S::kSlots;
      // Never read past the block table's row; a page outside the pool reads as zeros (TMA), never faults.
      const int page = blk < p.max_blocks_per_seq ? __ldg(table_row + blk) : -1;
      const int row = -page_tail_shift(blk, w.seqlen);
      mbarrier_wait(S::empty_bar(base, slot), ((count / S::kSlots) & 1) ^ 1);
      const uint32_t dst = base + S::slots + slot * kSlotBytes, bar = S::full_bar(base, slot);
      mbarrier_arrive_expect_tx(bar, kSlotBytes);
      tma_load_4d(dst, latent_map, bar, 0, row, page, 0);
      tma_load_3d(dst + kLatentBytes, rope_map, bar, 0, row, page);
      tma_load_3d(dst + kLatentBytes + kRopeBytes, scale_map, bar, 0, row, page);
    }
  }
}

// Two e4m3 pairs (bytes 0, 1 and 2, 3 of `w`) as two f16x2.
__device__ __forceinline__ void e4m3x4_to_f16x2x2(uint32_t w, uint32_t& lo, uint32_t& hi) {
  asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.rn.f16x2.e4m3x2 %0, l;\n cvt.rn.f16x2.e4m3x2 %1, h;\n}"
      : "=r"(lo), "=r"(hi)
      : "r"(w));
}

__device__ __forceinline__ void lds128(uint32_t addr, uint32_t (&v)[4]) {
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3])
               : "r"(addr));
}
__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];" : "=r"(v) : "r"(addr));
  return v;
}
__device__ __forceinline__ void sts32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t addr, const uint32_t (&v)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(v[0]),
               "r"(v[1]), "r"(v[2]), "r"(v[3])
               : "memory");
}

// Where k column `col` (0..575 in the contraction's order) of query row n goes in the B operand chunks.
template <class S>
__device__ __forceinline__ uint32_t operand_offset(int n, int col) {
  return (col / 64) * S::kOperandBytes + swizzle_128b_offset(n, (col % 64) / 8) + (col % 8) * 2;
}
// The contraction column of the first of two adjacent values at dim 32q + 4s + 2e (e = 0, 1) of a 128-value run
// that is k-steps [8g, 8g + 8): k-step 8g + s, columns 2q + 8e, 2q + 8e + 1 of it.
__device__ __forceinline__ int contraction_col(int step, int q, int e) { return 16 * step + 2 * q + 8 * e; }

// The rope's 16-byte units (8 values) that thread kq of a row writes into Q's operand: unit u feeds k-steps
// 2 (u % 2) + {0, 1} (contraction_col), so with two warpgroups warpgroup h, which takes rope k-steps 2h and 2h + 1,
// writes the units of parity h.
template <class S, int kWg>
__device__ __forceinline__ int rope_unit(int kq, int i) {
  return S::kWarpgroups * (kq + (kWarpgroupThreads / S::kRows) * i) + kWg;
}

// Warpgroup kWg's part of one item's Q (batch entry `batch`), read from global memory, into shared memory as the B
// operand: its latent values (scale groups kGroups kWg ..) as f16, each row times 2^k (2^-k kept in q_unscale: per
// warpgroup, as each adds its own part of the scores), and its rope values (all of them, or with two warpgroups its
// half) as bf16; rows past the item's s_q * h_q are zeros.
// kThreadsPerRow threads share a row; each takes every kThreadsPerRow-th 16-byte unit of the warpgroup's latent part
// and of the rope. (Staging the next item's Q in shared memory, one bulk copy by the producer, measured no faster and
// would cost the two-warpgroup shape a page slot.)
template <class S, int kWg>
__device__ __forceinline__ void load_q(const MlaDecodeParams& p, int batch, uint32_t base, float* q_unscale) {
  constexpr int kThreadsPerRow = kWarpgroupThreads / S::kRows;            // 8 or 4
  constexpr int kLatentUnits = 64 / S::kWarpgroups / kThreadsPerRow;     // 8
  constexpr int kRopeUnits = 8 / kThreadsPerRow / S::kWarpgroups;       // 1: with two, the units of parity kWg
  const int tid = threadIdx.x % kWarpgroupThreads, n = tid / kThreadsPerRow, kq = tid % kThreadsPerRow;
  const int rows_total = p.s_q * p.h_q;
  const bool valid = n < rows_total;
  const uint4* src = reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(p.q) +
                                                    (static_cast<int64_t>(batch) * rows_total + n) * kHeadDim);
  const int first_unit = kWg * 64 / S::kWarpgroups;
  uint4 u[kLatentUnits + kRopeUnits];
#pragma unroll
  for (int i = 0; i < kLatentUnits; ++i)
    u[i] = valid ? __ldg(src + first_unit + kq + kThreadsPerRow * i) : make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int i = 0; i < kRopeUnits; ++i)
    u[kLatentUnits + i] = valid ? __ldg(src + 64 + rope_unit<S, kWg>(kq, i)) : make_uint4(0, 0, 0, 0);
  float mx = 0.f;
#pragma unroll
  for (int i = 0; i < kLatentUnits; ++i) {
    const uint32_t w[4] = {u[i].x, u[i].y, u[i].z, u[i].w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = ElemTraits<__nv_bfloat16>::unpack(w[j]);
      mx = fmaxf(mx, fmaxf(fabsf(f.x), fabsf(f.y)));  // NaN is skipped here; it still reaches the scores
    }
  }
#pragma unroll
  for (int mask = 1; mask < kThreadsPerRow; mask *= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, mask));
  const int e = static_cast<int>((__float_as_uint(mx) >> 23) & 0xff) - 127;  // mx in [2^e, 2^(e + 1))
  const int k = (mx == 0.f || e == 128) ? 0 : min(max(14 - e, -100), 100);
  const float up = __uint_as_float(static_cast<uint32_t>(127 + k) << 23);
  if (kq == 0) q_unscale[n] = __uint_as_float(static_cast<uint32_t>(127 - k) << 23);
  const uint32_t q_latent = base + S::q_latent, q_rope = base + S::q_rope;
#pragma unroll
  for (int i = 0; i < kLatentUnits; ++i) {
    const int unit = first_unit + kq + kThreadsPerRow * i;  // dims 8 unit .. + 7
    const int g = unit / 16, qq = (unit % 16) / 4, s0 = 2 * (unit % 4);
    const uint32_t w[4] = {u[i].x, u[i].y, u[i].z, u[i].w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = ElemTraits<__nv_bfloat16>::unpack(w[j]);
      const uint32_t h = ElemTraits<__half>::pack(f.x * up, f.y * up);
      sts32(q_latent + operand_offset<S>(n, contraction_col(8 * g + s0 + j / 2, qq, j % 2)), h);
    }
  }
#pragma unroll
  for (int i = 0; i < kRopeUnits; ++i) {
    const int unit = rope_unit<S, kWg>(kq, i);  // rope dims 8 unit .. + 7
    const int qq = unit / 2, s0 = 2 * (unit % 2);
    const uint32_t w[4] = {u[kLatentUnits + i].x, u[kLatentUnits + i].y, u[kLatentUnits + i].z, u[kLatentUnits + i].w};
#pragma unroll
    for (int j = 0; j < 4; ++j) sts32(q_rope + operand_offset<S>(n, contraction_col(s0 + j / 2, qq, j % 2)), w[j]);
  }
}

// The consumers' view of one thread: warp w of its warpgroup, tokens t0 = 16w + r and t1 = t0 + 8 of S^T; query
// columns col(c) = 8 (c / 2) + 2q + (c % 2) of S^T and O^T (accumulator register i holds column 8 (i / 4) + 2q +
// (i % 2), row half (i / 2) % 2).
struct Lane {
  int w, r, q, t0, index;
  __device__ Lane() {
    index = threadIdx.x % kWarpgroupThreads;
    w = index / 32;
    r = (index % 32) / 4;
    q = index % 4;
    t0 = 16 * w + r;
  }
  __device__ int col(int c) const { return 8 * (c / 2) + 2 * q + (c % 2); }
};
__device__ __forceinline__ int acc_col(int i) { return 2 * (i / 4) + (i % 2); }  // which of the lane's columns
__device__ __forceinline__ int acc_half(int i) { return (i / 2) % 2; }           // token t0 (0) or t1 (1)

// Warpgroup kWg's part of S^T over one page: its latent groups kGroups kWg + gi into acc[gi], and its rope k-steps
// (all four, or with two warpgroups 2 kWg and 2 kWg + 1) into acc_rope. Each group's 8 k-steps come from 4 shared
// loads (two tokens x two 16-byte units); fragments are double-buffered against the wgmma that reads them.
template <class S, int kWg>
__device__ __forceinline__ void scores(float (&acc)[S::kGroups][S::kAcc], float (&acc_rope)[S::kAcc],
                                       uint32_t slot_addr, uint32_t base, const Lane& l) {
  const uint64_t q_desc = smem_desc_sw128(base + S::q_latent, 16, 1024);
  const uint64_t rope_desc = smem_desc_sw128(base + S::q_rope, 16, 1024);
  constexpr int kParts = S::kGroups + 1;  // the latent groups, then the rope
  uint32_t frag[2][32];
#pragma unroll
  for (int gi = 0; gi < kParts; ++gi) {
    const int g = S::kGroups * kWg + gi;
    uint32_t(&a)[32] = frag[gi % 2];
    if (gi >= 2) {
      wgmma_wait<1>();
      fence_operands(a);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int t = l.t0 + 8 * half;
        uint32_t v[4];
        if (gi < S::kGroups) {
          lds128(slot_addr + g * kGroupBytes + swizzle_128b_offset(t, 2 * l.q + h), v);
#pragma unroll
          for (int s = 0; s < 4; ++s) {
            // k-step 4h + s: a0 / a1 = rows t0 / t1 at columns 2q, 2q + 1; a2 / a3 at 2q + 8, 2q + 9.
            uint32_t lo, hi;
            e4m3x4_to_f16x2x2(v[s], lo, hi);
            a[4 * (4 * h + s) + half] = lo;
            a[4 * (4 * h + s) + 2 + half] = hi;
          }
        } else if (S::kWarpgroups == 1 || h == kWg) {
          lds128(slot_addr + kLatentBytes + swizzle_128b_offset(t, 2 * l.q + h), v);
#pragma unroll
          for (int s = 0; s < 2; ++s) {  // rope k-step 2h + s: bf16 pairs as stored
            a[4 * (2 * h + s) + half] = v[2 * s];
            a[4 * (2 * h + s) + 2 + half] = v[2 * s + 1];
          }
        }
      }
    wgmma_fence();
    if (gi < S::kGroups) {
#pragma unroll
      for (int s = 0; s < 8; ++s) {
        const int step = 8 * g + s;
        const uint32_t off = ((step / 4) * S::kOperandBytes + (step % 4) * 32) >> 4;
        mma_f16<S::kRows>(acc[gi], a + 4 * s, q_desc + off, s != 0);
      }
    } else {
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        constexpr int kFirst = S::kWarpgroups == 1 ? 0 : 2 * kWg;
        if (s >= kFirst && s < kFirst + 4 / S::kWarpgroups)
          mma_bf16<S::kRows>(acc_rope, a + 4 * s, rope_desc + s * 2, s != kFirst);
      }
    }
    wgmma_commit();
  }
  wgmma_wait<0>();
  fence_operands(frag[0]);
  fence_operands(frag[1]);
#pragma unroll
  for (int gi = 0; gi < S::kGroups; ++gi) fence_accumulators(acc[gi]);
  fence_accumulators(acc_rope);
}

// O^T += V^T P'^T over warpgroup kWg's groups of one page: per k-step (16 tokens) and group b, four 4-byte loads
// (tokens 16s + 2q + {0, 1, 8, 9}), two byte permutes per token pair and one cvt per two values give m-tiles 2b and
// 2b + 1 (o[2 bi], o[2 bi + 1] for b = kGroups kWg + bi). Releases the slot (for its warps) once every load of it is
// done (the fragments are registers).
template <class S, int kWg>
__device__ __forceinline__ void values(float (&o)[2 * S::kGroups][S::kAcc], uint32_t slot_addr, uint32_t base,
                                       const Lane& l, uint32_t empty) {
  constexpr int kFrag = 8 * S::kGroups;
  const uint32_t unit_base = static_cast<uint32_t>(2 * l.w + l.r / 4), byte = 4 * (l.r % 4);
  uint32_t frag[2][kFrag];
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    uint32_t(&a)[kFrag] = frag[s % 2];
    if (s >= 2) {
      wgmma_wait<1>();
      fence_operands(a);
    }
#pragma unroll
    for (int bi = 0; bi < S::kGroups; ++bi)
#pragma unroll
      for (int pair = 0; pair < 2; ++pair) {
        const int t = 16 * s + 2 * l.q + 8 * pair;  // tokens t, t + 1 (t % 8 = 2q: rows t and t + 1 differ in the swizzle)
        const uint32_t group = slot_addr + (S::kGroups * kWg + bi) * kGroupBytes + byte;
        const uint32_t x = lds32(group + t * 128 + ((unit_base ^ (t & 7)) << 4));
        const uint32_t y = lds32(group + (t + 1) * 128 + ((unit_base ^ ((t + 1) & 7)) << 4));
        uint32_t v0, v1, v2, v3;
        e4m3x4_to_f16x2x2(__byte_perm(x, y, 0x5140), v0, v1);  // values 0, 1 of both tokens
        e4m3x4_to_f16x2x2(__byte_perm(x, y, 0x7362), v2, v3);  // values 2, 3
        // tile 2b: rows i = 0 (value 0), 1 (value 1); tile 2b + 1: values 2, 3. pair 0 -> a0 / a1, pair 1 -> a2 / a3.
        a[8 * bi + 2 * pair] = v0;
        a[8 * bi + 2 * pair + 1] = v1;
        a[8 * bi + 4 + 2 * pair] = v2;
        a[8 * bi + 4 + 2 * pair + 1] = v3;
      }
    if (s == 3) {
      __syncwarp();
      if (threadIdx.x % 32 == 0) mbarrier_arrive(empty);
    }
    wgmma_fence();
#pragma unroll
    for (int bi = 0; bi < S::kGroups; ++bi) {
      const uint64_t p_desc =
          smem_desc_sw128(base + S::p + (S::kGroups * kWg + bi) * S::kOperandBytes, 16, 1024) + s * 2;
      mma_f16<S::kRows>(o[2 * bi], a + 8 * bi, p_desc, 1);
      mma_f16<S::kRows>(o[2 * bi + 1], a + 8 * bi + 4, p_desc, 1);
    }
    wgmma_commit();
  }
  wgmma_wait<0>();
  fence_operands(frag[0]);
  fence_operands(frag[1]);
#pragma unroll
  for (int j = 0; j < 2 * S::kGroups; ++j) fence_accumulators(o[j]);
}

__device__ __forceinline__ float max_over_rows(float v) {  // over the 8 lanes of a column (lane bits 2..4)
  v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, 4));
  v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, 8));
  return fmaxf(v, __shfl_xor_sync(0xffffffff, v, 16));
}
__device__ __forceinline__ float sum_over_rows(float v) {
  v += __shfl_xor_sync(0xffffffff, v, 4);
  v += __shfl_xor_sync(0xffffffff, v, 8);
  return v + __shfl_xor_sync(0xffffffff, v, 16);
}

// A group's running scale C moves to the page's largest when that is above it, or below 2^-6 of it (not for a page
// whose scales are all 0: nothing to weigh).
__device__ __forceinline__ float lazy_group_scale(float c_run, float c_page) {
  return (c_page > c_run || (c_page > 0.f && c_page < c_run * 0.015625f)) ? c_page : c_run;
}

// The scale warp: for every page, once it has landed, the largest of its 64 tokens' scales per group (lane t reads
// tokens t and t + 32), and from it the groups' running C_b (lazy_group_scale, from 0 at each item's start): into
// group_scales[slot] go C_b, old C_b / C_b (1 when it did not move) and 1 / C_b (0 while C_b is 0), then scales_bar.
// These are the same for every consumer thread, which each reduced them from its two tokens and derived the rest (~60
// instructions a page). The slot is refilled only after the consumers, which wait for scales_bar, release it.
template <class S>
__device__ __forceinline__ void group_scales(const PartWalker& walker, uint8_t* smem, uint32_t base) {
  const int lane = threadIdx.x % 32;
  uint32_t count = 0;
  for (int k = 0; k < walker.num_items(); ++k) {
    const WorkItem w = walker.item(walker.begin_batch + k);
    if (w.stop_block <= w.start_block) continue;
    float c_run = 0.f;  // group (lane % 4)'s
    for (int blk = w.start_block; blk < w.stop_block; ++blk, ++count) {
      const int slot = count % S::kSlots;
      mbarrier_wait(S::full_bar(base, slot), (count / S::kSlots) & 1);
      const float4* scales = reinterpret_cast<const float4*>(smem + S::slots + slot * kSlotBytes + kLatentBytes +
                                                             kRopeBytes);
      const float4 a = scales[lane], b = scales[lane + 32];
      float m[4] = {fmaxf(a.x, b.x), fmaxf(a.y, b.y), fmaxf(a.z, b.z), fmaxf(a.w, b.w)};
#pragma unroll
      for (int mask = 16; mask >= 1; mask /= 2)
#pragma unroll
        for (int g = 0; g < 4; ++g) m[g] = fmaxf(m[g], __shfl_xor_sync(0xffffffff, m[g], mask));
      const float page_max = lane % 4 == 0 ? m[0] : lane % 4 == 1 ? m[1] : lane % 4 == 2 ? m[2] : m[3];
      const float c_new = lazy_group_scale(c_run, page_max);
      const float ratio = c_new == c_run ? 1.f : c_run / c_new;
      const float inv = c_new > 0.f ? 1.f / c_new : 0.f;
      c_run = c_new;
      if (lane < 4) {
        float* out = reinterpret_cast<float*>(smem + S::group_scales + kGroupScaleBytes * slot);
        out[lane] = c_new, out[4 + lane] = ratio, out[8 + lane] = inv;
      }
      __syncwarp();  // lanes 1..3's stores before lane 0's arrive (release)
      if (lane == 0) mbarrier_arrive(S::scales_bar(base, slot));
    }
  }
}

// This warpgroup's part of a page's scores (its groups' sums times their scales and the row's 2^-k, plus its rope
// part: every column) and, for the columns it owns, the whole score: with two warpgroups, each leaves the other's
// columns' part in shared memory (float4 j of thread t at [parity][writer][j][t]) and adds the part left for its own.
template <class S, int kWg>
__device__ __forceinline__ void own_scores(float (&sc)[S::kOwnAcc], const float (&s)[S::kGroups][S::kAcc],
                                           const float (&s_rope)[S::kAcc], const float (&scale)[2][4],
                                           const float (&unscale)[S::kCols], float4* score_parts, uint32_t parity,
                                           const Lane& l) {
  constexpr int kOA = S::kOwnAcc, kG = S::kGroups;
  float part[S::kAcc];
#pragma unroll
  for (int i = 0; i < S::kAcc; ++i) {
    float x = 0.f;
#pragma unroll
    for (int bi = 0; bi < kG; ++bi) x += s[bi][i] * scale[acc_half(i)][kG * kWg + bi];
    part[i] = x * unscale[acc_col(i)] + s_rope[i];
  }
  if constexpr (S::kWarpgroups == 2) {
    constexpr int kOther = 1 - kWg;
    float4* mine = score_parts + (parity * 2 + kWg) * (kOA / 4) * kWarpgroupThreads + l.index;
    const float4* theirs = score_parts + (parity * 2 + kOther) * (kOA / 4) * kWarpgroupThreads + l.index;
#pragma unroll
    for (int j = 0; j < kOA / 4; ++j) {
      const float* x = part + kOA * kOther + 4 * j;
      mine[j * kWarpgroupThreads] = make_float4(x[0], x[1], x[2], x[3]);
    }
    named_barrier_sync(kBarScores, S::kConsumerThreads);
#pragma unroll
    for (int j = 0; j < kOA / 4; ++j) {
      const float4 other = theirs[j * kWarpgroupThreads];
      const float* x = part + kOA * kWg + 4 * j;
      sc[4 * j] = x[0] + other.x;
      sc[4 * j + 1] = x[1] + other.y;
      sc[4 * j + 2] = x[2] + other.z;
      sc[4 * j + 3] = x[3] + other.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < kOA; ++i) sc[i] = part[i];
  }
}

// The page's maxima of the own columns: over the warp (shuffles), then over the warpgroup's four warps through x (this
// page's half of the warpgroup's exchange buffer; one barrier). The own columns come in adjacent pairs (l.col(2j),
// l.col(2j + 1) = even, even + 1), exchanged as float2.
template <class S, int kWg>
__device__ __forceinline__ void page_maxima(float (&page_max)[S::kOwnCols], const float (&sc)[S::kOwnAcc], float* x,
                                            const Lane& l) {
  constexpr int kOC = S::kOwnCols;
  static_assert(kOC % 2 == 0 && S::kExchangeFloats % 2 == 0, "float2 exchange layout");
#pragma unroll
  for (int c = 0; c < kOC; ++c) page_max[c] = -INFINITY;
#pragma unroll
  for (int i = 0; i < S::kOwnAcc; ++i) page_max[acc_col(i)] = fmaxf(page_max[acc_col(i)], sc[i]);
#pragma unroll
  for (int c = 0; c < kOC; ++c) page_max[c] = max_over_rows(page_max[c]);
  if (l.r == 0)
#pragma unroll
    for (int c = 0; c < kOC; c += 2)
      *reinterpret_cast<float2*>(x + l.w * S::kExchangeFloats + l.col(kOC * kWg + c)) =
          make_float2(page_max[c], page_max[c + 1]);
  named_barrier_sync(kBarExchange + kWg, kWarpgroupThreads);
#pragma unroll
  for (int c = 0; c < kOC; c += 2) {
    const int col = l.col(kOC * kWg + c);
    float2 m = *reinterpret_cast<const float2*>(x + col);
#pragma unroll
    for (int v = 1; v < 4; ++v) {
      const float2 other = *reinterpret_cast<const float2*>(x + v * S::kExchangeFloats + col);
      m.x = fmaxf(m.x, other.x);
      m.y = fmaxf(m.y, other.y);
    }
    page_max[c] = m.x;
    page_max[c + 1] = m.y;
  }
}

// P'_b = P * scale / C_b, f16, for every group b and the own 16 columns (16 kWg ..): one stmatrix .trans of four
// 8 x 8 blocks (tokens t0 / t1 block x 8 columns) per group, lane (matrix lane / 8, row lane % 8) addressing one row.
template <class S, int kWg>
__device__ __forceinline__ void write_p(uint32_t base, const float (&sc)[S::kOwnAcc], const float (&weight)[4][2],
                                        const Lane& l) {
  const int lane = threadIdx.x % 32, mi = lane / 8;
  const uint32_t p_row = swizzle_128b_offset(16 * kWg + 8 * (mi / 2) + lane % 8, 2 * l.w + (mi & 1));
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    uint32_t v[4];
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const float wt = weight[b][m % 2];  // matrix m: tokens t0 (even m) or t1, columns 16 kWg + 8 (m / 2) ..
      v[m] = ElemTraits<__half>::pack(sc[2 * m] * wt, sc[2 * m + 1] * wt);
    }
    stmatrix_x4_trans(base + S::p + b * S::kOperandBytes + p_row, v);
  }
}

// This warpgroup's O^T covers every column: each column's factor (the other warpgroup's columns' from shared memory,
// published before the P' barrier) times its groups' C_b ratio (ratio: the page's group_scales record, shared
// memory); skipped when the warp has nothing to rescale.
template <class S, int kWg>
__device__ __forceinline__ void rescale_o(float (&o)[2 * S::kGroups][S::kAcc], const float (&alpha)[S::kOwnCols],
                                          const float* alphas, const float* ratio, const Lane& l) {
  constexpr int kC = S::kCols, kOC = S::kOwnCols, kG = S::kGroups;
  float alpha_all[kC];
  bool rescale = false;
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const int own = c - kOC * kWg;
    alpha_all[c] = (own >= 0 && own < kOC) ? alpha[own] : alphas[l.col(c)];
    rescale |= alpha_all[c] != 1.f;
  }
#pragma unroll
  for (int bi = 0; bi < kG; ++bi) rescale |= ratio[kG * kWg + bi] != 1.f;
  if (__any_sync(0xffffffff, rescale)) {
#pragma unroll
    for (int j = 0; j < 2 * kG; ++j)
#pragma unroll
      for (int i = 0; i < S::kAcc; ++i) o[j][i] *= alpha_all[acc_col(i)] * ratio[kG * kWg + j / 2];
  }
}

// Warpgroup kWg's part of one finished item: O = C_b O^T / l for its groups (every column: total holds each column's
// sum) and, for the columns it owns, lse (m_own: their running maxima), to out / lse or to the split workspace
// (store_tile's rules).
template <class S, int kWg>
__device__ __forceinline__ void store_item(const MlaDecodeParams& p, const WorkItem& w, const OutputSlot& slot,
                                           bool poison, const Lane& l, const float (&o)[2 * S::kGroups][S::kAcc],
                                           const float (&c_run)[4], const float (&m_own)[S::kOwnCols],
                                           const float (&total)[S::kCols], float scale_log2) {
  const int rows_total = p.s_q * p.h_q;
#pragma unroll
  for (int c = 0; c < S::kCols; ++c) {
    const int n = l.col(c);
    if (n >= rows_total) continue;
    const bool seen = total[c] != 0.f;  // a NaN sum counts as seen, so that the NaN reaches out and lse
    const float inv = poison ? NAN : (seen ? 1.f / total[c] : 0.f);
    const int64_t row = slot.direct ? static_cast<int64_t>(w.batch) * rows_total + n
                                    : static_cast<int64_t>(slot.split_row) * rows_total + n;
    const int i0 = 4 * (c / 2) + (c % 2), i1 = i0 + 2;  // rows i = 0, 1 of column c
#pragma unroll
    for (int bi = 0; bi < S::kGroups; ++bi) {
      const float f = c_run[S::kGroups * kWg + bi] * inv;
      const float v0 = o[2 * bi][i0] * f, v1 = o[2 * bi][i1] * f, v2 = o[2 * bi + 1][i0] * f,
                  v3 = o[2 * bi + 1][i1] * f;
      const int col = 128 * (S::kGroups * kWg + bi) + 4 * (8 * l.w + l.r);
      if (slot.direct) {
        *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(p.out) + row * kHeadDimV + col) =
            make_uint2(ElemTraits<__nv_bfloat16>::pack(v0, v1), ElemTraits<__nv_bfloat16>::pack(v2, v3));
      } else {
        *reinterpret_cast<float4*>(p.o_accum + row * kHeadDimV + col) = make_float4(v0, v1, v2, v3);
      }
    }
    const int own = c - S::kOwnCols * kWg;
    if (own >= 0 && own < S::kOwnCols && l.w == 0 && l.r == 0) {
      float lse_value = seen ? (m_own[own] * scale_log2 + log2f(total[c])) * 0.6931471805599453f
                             : (slot.direct ? INFINITY : -INFINITY);
      if (poison) lse_value = NAN;
      if (slot.direct) {
        const int token = n / p.h_q, head = n % p.h_q;
        p.lse[(static_cast<int64_t>(w.batch) * p.h_q + head) * p.s_q + token] = lse_value;
      } else {
        p.lse_accum[row] = lse_value;
      }
    }
  }
}

template <class S, int kWg>
__device__ __forceinline__ void consume(const MlaDecodeParams& p, const PartWalker& walker, uint8_t* smem,
                                        uint32_t base) {
  constexpr int kN = S::kRows, kC = S::kCols, kA = S::kAcc, kG = S::kGroups;
  constexpr int kOA = S::kOwnAcc, kOC = S::kOwnCols;
  const Lane l;
  const int rows_total = p.s_q * p.h_q;
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
  const float lazy_margin = kLazyRescaleLog2 / scale_log2;  // in scores: the running max's lazy margin
  float4* score_parts = reinterpret_cast<float4*>(smem + S::scores);
  float* exchange = reinterpret_cast<float*>(smem + S::exchange) + kWg * 2 * 4 * S::kExchangeFloats;
  float* q_unscale = reinterpret_cast<float*>(smem + S::q_unscale) + kWg * kN;
  float* alphas = reinterpret_cast<float*>(smem + S::alphas);
  float* sums = reinterpret_cast<float*>(smem + S::sums);
  uint32_t count = 0;
  const int num_items = walker.num_items();
  ItemPlan next_plan;
  if (num_items > 0) next_plan = load_item_plan(p, walker, 0);
  for (int k = 0; k < num_items; ++k) {
    const ItemPlan plan = next_plan;
    if (k + 1 < num_items) next_plan = load_item_plan(p, walker, k + 1);
    const WorkItem& w = plan.w;
    if (w.stop_block <= w.start_block) continue;
    const OutputSlot& slot = plan.slot;
    const bool poison = plan.length_changed;
    // This warpgroup's previous reads of its Q part are behind all its threads (the epilogue's barrier); the other
    // warpgroup reads none of it.
    load_q<S, kWg>(p, w.batch, base, q_unscale);
    fence_proxy_async_smem();
    named_barrier_sync(kBarQ + kWg, kWarpgroupThreads);
    float unscale[kC];
#pragma unroll
    for (int c = 0; c < kC; ++c) unscale[c] = q_unscale[l.col(c)];
    int key_limit[kOC];
#pragma unroll
    for (int c = 0; c < kOC; ++c) {
      const int token = min(l.col(kOC * kWg + c), rows_total - 1) / p.h_q;
      key_limit[c] = p.causal ? w.seqlen - p.s_q + token + 1 : w.seqlen;
    }
    const int min_limit = p.causal ? w.seqlen - p.s_q + 1 : w.seqlen;

    float o[2 * kG][kA];
#pragma unroll
    for (int j = 0; j < 2 * kG; ++j)
#pragma unroll
      for (int i = 0; i < kA; ++i) o[j][i] = 0.f;
    // The own columns' running max, its product with scale_log2 and this thread's partial sums (its two tokens of
    // each page).
    float m_run[kOC], m_scaled[kOC], l_sum[kOC];
#pragma unroll
    for (int c = 0; c < kOC; ++c) m_run[c] = -INFINITY, m_scaled[c] = 0.f, l_sum[c] = 0.f;
    float c_run[4];  // every group's C_b (P' is written for all four), as group_scales publishes them
#pragma unroll
    for (int b = 0; b < 4; ++b) c_run[b] = 0.f;

    for (int blk = w.start_block; blk < w.stop_block; ++blk, ++count) {
      const int slot_index = count % S::kSlots;
      const uint32_t slot_addr = base + S::slots + slot_index * kSlotBytes;
      mbarrier_wait(S::full_bar(base, slot_index), (count / S::kSlots) & 1);
      float s[kG][kA], s_rope[kA];
      scores<S, kWg>(s, s_rope, slot_addr, base, l);
      float scale[2][4];  // [token t0 / t1][group]
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float4 token_scales = *reinterpret_cast<const float4*>(
            smem + S::slots + slot_index * kSlotBytes + kLatentBytes + kRopeBytes + (l.t0 + 8 * half) * 16);
        scale[half][0] = token_scales.x, scale[half][1] = token_scales.y;
        scale[half][2] = token_scales.z, scale[half][3] = token_scales.w;
      }
      float sc[kOA];
      own_scores<S, kWg>(sc, s, s_rope, scale, unscale, score_parts, count & 1, l);
      // Keys past the end (and, causal, past each row's last visible key) and the zero rows of a last page loaded
      // shifted (page_tail_shift) get -inf. Own entry i is in own column acc_col(i).
      const int shift = page_tail_shift(blk, w.seqlen);
      if (blk * kPageSize + kPageSize > min_limit) {
#pragma unroll
        for (int i = 0; i < kOA; ++i) {
          const int row = l.t0 + 8 * acc_half(i);
          const int token = blk * kPageSize - shift + row;
          if (row < shift || token >= key_limit[acc_col(i)]) sc[i] = -INFINITY;
        }
      }
      // Online softmax down the own columns, the running max lazy (exact: it moves only when a score passes its
      // limit m_run + lazy_margin, so P <= 2^kLazyRescaleLog2). On nearly every page none does; with
      // kSkipSteadyExchange one barrier-reduction of the warpgroup tells, and the page's column maxima (shuffles, the
      // exchange through shared memory and its barrier) and the rescale factors are then skipped.
      float m_limit[kOC];
#pragma unroll
      for (int c = 0; c < kOC; ++c) m_limit[c] = m_run[c] + lazy_margin;
      bool exchange_maxima = true;
      if constexpr (S::kSkipSteadyExchange) {
        bool passes = false;
#pragma unroll
        for (int i = 0; i < kOA; ++i) passes |= sc[i] > m_limit[acc_col(i)];
        exchange_maxima = named_barrier_any(kBarExchange + kWg, kWarpgroupThreads, passes);
      }
      float alpha[kOC];
#pragma unroll
      for (int c = 0; c < kOC; ++c) alpha[c] = 1.f;
      if (exchange_maxima) {
        float page_max[kOC];
        page_maxima<S, kWg>(page_max, sc, exchange + (count & 1) * 4 * S::kExchangeFloats, l);
#pragma unroll
        for (int c = 0; c < kOC; ++c) {
          const float m_new = page_max[c] > m_limit[c] ? page_max[c] : m_run[c];
          alpha[c] = seesaw_rescale(m_run[c], m_new, scale_log2);
          m_run[c] = m_new;
          m_scaled[c] = m_new == -INFINITY ? 0.f : m_new * scale_log2;
          l_sum[c] *= alpha[c];
        }
      }
#pragma unroll
      for (int i = 0; i < kOA; ++i) {
        sc[i] = exp2f(sc[i] * scale_log2 - m_scaled[acc_col(i)]);
        l_sum[acc_col(i)] += sc[i];
      }
      mbarrier_wait(S::scales_bar(base, slot_index), (count / S::kSlots) & 1);
      // C_b, its ratio to the previous page's and 1 / C_b (group_scales), as floats [3][4].
      const float* group = reinterpret_cast<const float*>(smem + S::group_scales + kGroupScaleBytes * slot_index);
      const float4 c_page = *reinterpret_cast<const float4*>(group), inv = *reinterpret_cast<const float4*>(group + 8);
      c_run[0] = c_page.x, c_run[1] = c_page.y, c_run[2] = c_page.z, c_run[3] = c_page.w;
      const float weight[4][2] = {  // scale(token, b) / C_b for the lane's two tokens
          {scale[0][0] * inv.x, scale[1][0] * inv.x}, {scale[0][1] * inv.y, scale[1][1] * inv.y},
          {scale[0][2] * inv.z, scale[1][2] * inv.z}, {scale[0][3] * inv.w, scale[1][3] * inv.w}};
      write_p<S, kWg>(base, sc, weight, l);
      if constexpr (S::kWarpgroups == 2) {
        if (l.w == 0 && l.r == 0)
#pragma unroll
          for (int c = 0; c < kOC; ++c) alphas[l.col(kOC * kWg + c)] = alpha[c];
      }
      fence_proxy_async_smem();
      named_barrier_sync(kBarP, S::kConsumerThreads);
      rescale_o<S, kWg>(o, alpha, alphas, group + 4, l);
      values<S, kWg>(o, slot_addr, base, l, S::empty_bar(base, slot_index));
    }

    // The column sums: each warpgroup writes its own columns' (over its four warps); every thread reads all its
    // columns'.
#pragma unroll
    for (int c = 0; c < kOC; ++c) {
      const float part = sum_over_rows(l_sum[c]);
      if (l.r == 0) sums[l.w * kN + l.col(kOC * kWg + c)] = part;
    }
    named_barrier_sync(kBarSums, S::kConsumerThreads);
    float total[kC];
#pragma unroll
    for (int c = 0; c < kC; ++c)
      total[c] = sums[l.col(c)] + sums[kN + l.col(c)] + sums[2 * kN + l.col(c)] + sums[3 * kN + l.col(c)];
    store_item<S, kWg>(p, w, slot, poison, l, o, c_run, m_run, total, scale_log2);
    // This warpgroup's Q part and the sums are rewritten only after its threads' reads of them (the other
    // warpgroup's reads of the sums are behind the next item's first kBarScores).
    named_barrier_sync(kBarItemEnd + kWg, kWarpgroupThreads);
  }
}

// latent_map: the page's latent bytes ({128, 64 tokens, pages, 4 groups}, 128B-swizzled); rope_map: its bf16 rope
// values ({64, 64 tokens, pages}, 128B-swizzled); scale_map: its scales ({4, 64 tokens, pages}): mla_decode_kernel.cu.
template <class S>
__global__ void __launch_bounds__(S::kThreads, 1)
    mla_decode_fp8_narrow_kernel(const __grid_constant__ MlaDecodeParams params,
                                 const __grid_constant__ CUtensorMap latent_map,
                                 const __grid_constant__ CUtensorMap rope_map,
                                 const __grid_constant__ CUtensorMap scale_map) {
  griddep_launch_dependents();  // the combine kernel may take SMs as CTAs exit (mla_decode_kernel.cu)
  extern __shared__ uint8_t smem_raw[];
  const AlignedSmem aligned = align_swizzle_atoms(smem_raw);
  const uint32_t base = aligned.addr;
  PartWalker walker(params.sched_metadata + blockIdx.x * kMetadataWidth, params.seqlens);
  if (walker.empty_by_metadata()) return;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S::kSlots; ++s) {
      mbarrier_init(S::full_bar(base, s), 1);
      mbarrier_init(S::empty_bar(base, s), S::kConsumerThreads / 32);  // every consumer warp
      mbarrier_init(S::scales_bar(base, s), 1);
    }
    fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x >= S::kConsumerThreads) {
    // Two consumer warpgroups: the producer warpgroup (one issuing thread, the scale warp) needs few registers, the
    // consumers take the rest (224 x 256 + 56 x 128 = 168 x 384; 240 / 24, 232 / 40 and 232 / 32 spilled).
    if constexpr (S::kWarpgroups == 2) setmaxnreg_dec<56>();
    if (threadIdx.x == S::kConsumerThreads) {
      prefetch_tensor_map(&latent_map);
      prefetch_tensor_map(&rope_map);
      prefetch_tensor_map(&scale_map);
      produce<S>(params, walker, base, &latent_map, &rope_map, &scale_map);
    } else if (static_cast<int>(threadIdx.x) / 32 == S::kScaleWarp) {
      group_scales<S>(walker, aligned.ptr, base);
    }
    return;
  }
  if constexpr (S::kWarpgroups == 2) {
    setmaxnreg_inc<224>();
    // Warp-uniform through a shuffle, so that ptxas sees each branch's wgmma as uniform (C7520).
    if (__shfl_sync(0xffffffff, static_cast<int>(threadIdx.x) / kWarpgroupThreads, 0) == 1) {
      consume<S, 1>(params, walker, aligned.ptr, base);
      return;
    }
  }
  consume<S, 0>(params, walker, aligned.ptr, base);
}

}  // namespace fp8_narrow
}  // namespace decode_detail
}  // namespace hf_flashmla
