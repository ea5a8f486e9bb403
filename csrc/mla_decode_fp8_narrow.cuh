// The FP8 decode kernel for few query rows (s_q * h_q <= 16: DeepSeek-V2-Lite, Moonlight, ... at s_q = 1), where the
// seesaw kernel's 64-row tiles are three quarters padding and decode is bound by the bytes read. It reads FlashMLA's
// 656-byte FP8 token (hf_flashmla/fp8_latent.py) without ever writing a bf16 copy of a page: the products are
// swapped so that the keys and values are the A operand of wgmma, which may come from registers, and each consumer
// thread dequantizes its share of a page straight from the landed bytes into wgmma fragments.
//
//   S^T = K Q^T   (m64 = the page's 64 tokens, n16 = the query rows, k = 512 latent + 64 rope values)
//   O^T = V^T P'^T (m64 x 8 = the 512 output values, n16, k = the page's 64 tokens)
//
// One CTA per part of the schedule, 160 threads: warpgroup 0 computes, warp 4's first lane issues TMA. Pages land
// whole in a ring of kSlots slots (latent bytes, rope values, scales: 41 KB per page, so four pages are in flight
// per SM, where the seesaw FP8 feed had two 72 KB bf16 stages and converted each page between its landing and its
// first product).
//
// Numbers. e4m3 -> f16 is exact (cvt.rn.f16x2.e4m3x2, one instruction per two values), so:
//  - K Q^T runs in f16 on the raw e4m3 values, one accumulator per 128-value scale group; the scales are applied to
//    the float32 accumulators (rows = tokens), so the keys are exactly float(e4m3) * scale as the reference reads
//    them (no bf16 rounding of the key). Q's latent part becomes f16 once per item, each row times a power of two
//    that puts its largest |value| in [2^14, 2^15) (exact: bf16 has fewer mantissa bits than f16; 29 binades below
//    the row's largest value are kept), undone on the float32 scores. The rope part stays bf16 (its own m64n16
//    accumulator against the cache's bf16 rope values).
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
// The softmax runs down the columns of S^T (over tokens): the four warps exchange their column maxima (and the page's
// largest scale per group) through shared memory, one barrier per page; a second barrier publishes P'.
#pragma once
#include "mla_decode_common.cuh"

namespace hf_flashmla {
namespace decode_detail {
namespace fp8_narrow {

constexpr int kRows = 16;                                     // query rows: the n of every wgmma
constexpr int kSlots = 4;
constexpr int kConsumerThreads = 128;
constexpr int kThreads = kConsumerThreads + 32;
constexpr int kGroupBytes = kPageSize * 128;                  // 8192: 128 latent bytes x 64 tokens
constexpr int kLatentBytes = 4 * kGroupBytes;                 // 32768
constexpr int kRopeBytes = kPageSize * 128;                   // 8192: 64 bf16 x 64 tokens
constexpr int kScaleBytes = kPageSize * 16;                   // 1024: 4 float32 x 64 tokens
constexpr int kSlotBytes = kLatentBytes + kRopeBytes + kScaleBytes;  // 41984
constexpr int kOperandBytes = kRows * 128;                    // 2048: 16 rows x 64 16-bit values, 128B-swizzled
constexpr int kExchangeFloats = kRows + 4;                    // per warp: column maxima, largest scale per group
constexpr uint32_t kBarExchange = 1, kBarP = 2, kBarQ = 3, kBarSums = 4;

struct Layout {
  static constexpr int q_latent = 0;                                // 8 operand chunks (k-steps 4c .. 4c + 3), f16
  static constexpr int q_rope = q_latent + 8 * kOperandBytes;       // bf16
  static constexpr int p = q_rope + kOperandBytes;                  // P'_b for the 4 groups, f16
  static constexpr int slots = p + 4 * kOperandBytes;
  static constexpr int exchange = slots + kSlots * kSlotBytes;      // float [2 page parities][4 warps][20]
  static constexpr int q_unscale = exchange + 2 * 4 * kExchangeFloats * 4;  // float [16]: 2^-k per row
  static constexpr int sums = q_unscale + kRows * 4;                // float [4 warps][16]
  static constexpr int q_staging = sums + 4 * kRows * 4;            // the next item's Q as stored: 16 x 576 bf16
  static constexpr int barriers = q_staging + kRows * kHeadDim * 2;  // full[kSlots], empty[kSlots], q_full, q_empty
  static constexpr int total = barriers + 8 * (2 * kSlots + 2);
};
constexpr int kSmemBytes = Layout::total + 1024;
static_assert(Layout::slots % 1024 == 0 && kSlotBytes % 1024 == 0, "slots must keep the swizzle atoms aligned");
static_assert(kSmemBytes <= 232448, "the narrow FP8 layout exceeds the 227 KB of opt-in shared memory");

__device__ __forceinline__ uint32_t full_bar(uint32_t base, int slot) { return base + Layout::barriers + 8 * slot; }
__device__ __forceinline__ uint32_t empty_bar(uint32_t base, int slot) {
  return base + Layout::barriers + 8 * (kSlots + slot);
}
__device__ __forceinline__ uint32_t q_full_bar(uint32_t base) { return base + Layout::barriers + 8 * 2 * kSlots; }
__device__ __forceinline__ uint32_t q_empty_bar(uint32_t base) { return q_full_bar(base) + 8; }

__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
               "l"(reinterpret_cast<uint64_t>(src)), "r"(bytes), "r"(bar)
               : "memory");
}

// The producer: per item its Q (the s_q * h_q rows as stored, one bulk copy into the staging buffer, which the
// consumers free once they have converted it: so the next item's Q lands while this one runs), then every page of
// it, in order, into slot (page count % kSlots).
__device__ __forceinline__ void produce(const MlaDecodeParams& p, const PartWalker& walker, uint32_t base,
                                        const CUtensorMap* latent_map, const CUtensorMap* rope_map,
                                        const CUtensorMap* scale_map) {
  const int rows_total = p.s_q * p.h_q;
  const uint32_t q_bytes = static_cast<uint32_t>(rows_total) * kHeadDim * 2;
  uint32_t count = 0, items = 0;
  for (int k = 0; k < walker.num_items(); ++k) {
    const WorkItem w = walker.item(walker.begin_batch + k);
    if (w.stop_block <= w.start_block) continue;
    mbarrier_wait(q_empty_bar(base), (items & 1) ^ 1);
    mbarrier_arrive_expect_tx(q_full_bar(base), q_bytes);
    bulk_load(base + Layout::q_staging,
              static_cast<const __nv_bfloat16*>(p.q) + static_cast<int64_t>(w.batch) * rows_total * kHeadDim, q_bytes,
              q_full_bar(base));
    ++items;
    const int* table_row = p.block_table + static_cast<int64_t>(w.batch) * p.block_table_stride;
    for (int blk = w.start_block; blk < w.stop_block; ++blk, ++count) {
      const int slot = count % kSlots;
      // Never read past the block table's row; a page outside the pool reads as zeros (TMA), never faults.
      const int page = blk < p.max_blocks_per_seq ? __ldg(table_row + blk) : -1;
      const int row = -page_tail_shift(blk, w.seqlen);
      mbarrier_wait(empty_bar(base, slot), ((count / kSlots) & 1) ^ 1);
      const uint32_t dst = base + Layout::slots + slot * kSlotBytes, bar = full_bar(base, slot);
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
__device__ __forceinline__ uint32_t operand_offset(int n, int col) {
  return (col / 64) * kOperandBytes + swizzle_128b_offset(n, (col % 64) / 8) + (col % 8) * 2;
}
// The contraction column of the first of two adjacent values at dim 32q + 4s + 2e (e = 0, 1) of a 128-value run
// that is k-steps [8g, 8g + 8): k-step 8g + s, columns 2q + 8e, 2q + 8e + 1 of it.
__device__ __forceinline__ int contraction_col(int step, int q, int e) { return 16 * step + 2 * q + 8 * e; }

// Q of one item, landed in the staging buffer, into shared memory as the B operand: the latent part f16 (each row
// times 2^k, 2^-k kept in q_unscale), the rope part bf16 as is; rows past the item's s_q * h_q are zeros. Thread
// (row n = tid / 8, kq = tid % 8) takes 16-byte units kq + 8i of the latent and unit kq of the rope; the staging
// buffer is released as soon as every warp has read it.
__device__ __forceinline__ void load_q(const MlaDecodeParams& p, uint8_t* smem, uint32_t base, float* q_unscale,
                                       uint32_t item_parity) {
  const int tid = threadIdx.x, n = tid / 8, kq = tid % 8;
  const bool valid = n < p.s_q * p.h_q;
  const uint4* src = reinterpret_cast<const uint4*>(smem + Layout::q_staging + n * kHeadDim * 2);
  mbarrier_wait(q_full_bar(base), item_parity);
  uint4 u[9];
#pragma unroll
  for (int i = 0; i < 9; ++i) u[i] = valid ? src[i < 8 ? kq + 8 * i : 64 + kq] : make_uint4(0, 0, 0, 0);
  __syncwarp();
  if (tid % 32 == 0) mbarrier_arrive(q_empty_bar(base));
  float mx = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const uint32_t w[4] = {u[i].x, u[i].y, u[i].z, u[i].w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = ElemTraits<__nv_bfloat16>::unpack(w[j]);
      mx = fmaxf(mx, fmaxf(fabsf(f.x), fabsf(f.y)));  // NaN is skipped here; it still reaches the scores
    }
  }
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 4));
  const int e = static_cast<int>((__float_as_uint(mx) >> 23) & 0xff) - 127;  // mx in [2^e, 2^(e + 1))
  const int k = (mx == 0.f || e == 128) ? 0 : min(max(14 - e, -100), 100);
  const float up = __uint_as_float(static_cast<uint32_t>(127 + k) << 23);
  if (kq == 0) q_unscale[n] = __uint_as_float(static_cast<uint32_t>(127 - k) << 23);
  const uint32_t q_latent = base + Layout::q_latent, q_rope = base + Layout::q_rope;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int unit = kq + 8 * i;                      // dims 8 unit .. + 7
    const int g = unit / 16, qq = (unit % 16) / 4, s0 = 2 * (unit % 4);
    const uint32_t w[4] = {u[i].x, u[i].y, u[i].z, u[i].w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = ElemTraits<__nv_bfloat16>::unpack(w[j]);
      const uint32_t h = ElemTraits<__half>::pack(f.x * up, f.y * up);
      sts32(q_latent + operand_offset(n, contraction_col(8 * g + s0 + j / 2, qq, j % 2)), h);
    }
  }
  {
    const int qq = kq / 2, s0 = 2 * (kq % 2);         // rope dims 8 kq .. + 7
    const uint32_t w[4] = {u[8].x, u[8].y, u[8].z, u[8].w};
#pragma unroll
    for (int j = 0; j < 4; ++j) sts32(q_rope + operand_offset(n, contraction_col(s0 + j / 2, qq, j % 2)), w[j]);
  }
}

// The consumers' view of one thread: warp w, tokens t0 = 16w + r and t1 = t0 + 8 of S^T; query columns
// cols[c] = 8 (c / 2) + 2q + (c % 2) of S^T and O^T (accumulator register i holds column 8 (i / 4) + 2q + (i % 2),
// row half (i / 2) % 2).
struct Lane {
  int w, r, q, t0;
  __device__ Lane() {
    w = threadIdx.x / 32;
    r = (threadIdx.x % 32) / 4;
    q = threadIdx.x % 4;
    t0 = 16 * w + r;
  }
  __device__ int col(int c) const { return 8 * (c / 2) + 2 * q + (c % 2); }
};
__device__ __forceinline__ int acc_col(int i) { return 2 * (i / 4) + (i % 2); }  // which of the lane's 4 columns
__device__ __forceinline__ int acc_half(int i) { return (i / 2) % 2; }           // token t0 (0) or t1 (1)

// S^T over one page: the four latent groups into s[g], the rope into s_rope. Each group's 8 k-steps come from 4
// shared loads (two tokens x two 16-byte units); fragments are double-buffered against the wgmma that reads them.
__device__ __forceinline__ void scores(float (&acc)[4][8], float (&acc_rope)[8], uint32_t slot_addr, uint32_t base,
                                       const Lane& l) {
  const uint64_t q_desc = smem_desc_sw128(base + Layout::q_latent, 16, 1024);
  const uint64_t rope_desc = smem_desc_sw128(base + Layout::q_rope, 16, 1024);
  uint32_t frag[2][32];
#pragma unroll
  for (int g = 0; g < 5; ++g) {
    uint32_t(&a)[32] = frag[g % 2];
    if (g >= 2) {
      wgmma_wait<1>();
      fence_operands(a);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int t = l.t0 + 8 * half;
        uint32_t v[4];
        if (g < 4) {
          lds128(slot_addr + g * kGroupBytes + swizzle_128b_offset(t, 2 * l.q + h), v);
#pragma unroll
          for (int s = 0; s < 4; ++s) {
            // k-step 4h + s: a0 / a1 = rows t0 / t1 at columns 2q, 2q + 1; a2 / a3 at 2q + 8, 2q + 9.
            uint32_t lo, hi;
            e4m3x4_to_f16x2x2(v[s], lo, hi);
            a[4 * (4 * h + s) + half] = lo;
            a[4 * (4 * h + s) + 2 + half] = hi;
          }
        } else {
          lds128(slot_addr + kLatentBytes + swizzle_128b_offset(t, 2 * l.q + h), v);
#pragma unroll
          for (int s = 0; s < 2; ++s) {  // rope k-step 2h + s: bf16 pairs as stored
            a[4 * (2 * h + s) + half] = v[2 * s];
            a[4 * (2 * h + s) + 2 + half] = v[2 * s + 1];
          }
        }
      }
    wgmma_fence();
    if (g < 4) {
#pragma unroll
      for (int s = 0; s < 8; ++s) {
        const int step = 8 * g + s;
        const uint32_t off = ((step / 4) * kOperandBytes + (step % 4) * 32) >> 4;
        wgmma_m64n16k16_rs_f16(acc[g], a[4 * s], a[4 * s + 1], a[4 * s + 2], a[4 * s + 3], q_desc + off, s != 0);
      }
    } else {
#pragma unroll
      for (int s = 0; s < 4; ++s)
        wgmma_m64n16k16_rs_bf16(acc_rope, a[4 * s], a[4 * s + 1], a[4 * s + 2], a[4 * s + 3], rope_desc + s * 2,
                                s != 0);
    }
    wgmma_commit();
  }
  wgmma_wait<0>();
  fence_operands(frag[0]);
  fence_operands(frag[1]);
#pragma unroll
  for (int g = 0; g < 4; ++g) fence_accumulators(acc[g]);
  fence_accumulators(acc_rope);
}

// O^T += V^T P'^T over one page: per k-step (16 tokens) and group b, four 4-byte loads (tokens 16s + 2q + {0, 1, 8,
// 9}), two byte permutes per token pair and one cvt per two values give m-tiles 2b and 2b + 1. Releases the slot
// once every load of it is done (the fragments are registers).
__device__ __forceinline__ void values(float (&o)[8][8], uint32_t slot_addr, uint32_t base, const Lane& l,
                                       uint32_t empty) {
  const uint32_t unit_base = static_cast<uint32_t>(2 * l.w + l.r / 4), byte = 4 * (l.r % 4);
  uint32_t frag[2][32];
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    uint32_t(&a)[32] = frag[s % 2];
    if (s >= 2) {
      wgmma_wait<1>();
      fence_operands(a);
    }
#pragma unroll
    for (int b = 0; b < 4; ++b)
#pragma unroll
      for (int pair = 0; pair < 2; ++pair) {
        const int t = 16 * s + 2 * l.q + 8 * pair;  // tokens t, t + 1 (t % 8 = 2q: rows t and t + 1 differ in the swizzle)
        const uint32_t group = slot_addr + b * kGroupBytes + byte;
        const uint32_t x = lds32(group + t * 128 + ((unit_base ^ (t & 7)) << 4));
        const uint32_t y = lds32(group + (t + 1) * 128 + ((unit_base ^ ((t + 1) & 7)) << 4));
        uint32_t v0, v1, v2, v3;
        e4m3x4_to_f16x2x2(__byte_perm(x, y, 0x5140), v0, v1);  // values 0, 1 of both tokens
        e4m3x4_to_f16x2x2(__byte_perm(x, y, 0x7362), v2, v3);  // values 2, 3
        // tile 2b: rows i = 0 (value 0), 1 (value 1); tile 2b + 1: values 2, 3. pair 0 -> a0 / a1, pair 1 -> a2 / a3.
        a[8 * b + 2 * pair] = v0;
        a[8 * b + 2 * pair + 1] = v1;
        a[8 * b + 4 + 2 * pair] = v2;
        a[8 * b + 4 + 2 * pair + 1] = v3;
      }
    if (s == 3) {
      __syncwarp();
      if (threadIdx.x % 32 == 0) mbarrier_arrive(empty);
    }
    wgmma_fence();
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const uint64_t p_desc = smem_desc_sw128(base + Layout::p + b * kOperandBytes, 16, 1024) + s * 2;
      wgmma_m64n16k16_rs_f16(o[2 * b], a[8 * b], a[8 * b + 1], a[8 * b + 2], a[8 * b + 3], p_desc, 1);
      wgmma_m64n16k16_rs_f16(o[2 * b + 1], a[8 * b + 4], a[8 * b + 5], a[8 * b + 6], a[8 * b + 7], p_desc, 1);
    }
    wgmma_commit();
  }
  wgmma_wait<0>();
  fence_operands(frag[0]);
  fence_operands(frag[1]);
#pragma unroll
  for (int j = 0; j < 8; ++j) fence_accumulators(o[j]);
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

// One finished item: O = C_b O^T / l and lse, to out / lse or to the split workspace (store_tile's rules).
__device__ __forceinline__ void store_item(const MlaDecodeParams& p, const WorkItem& w, const OutputSlot& slot,
                                           bool poison, const Lane& l, const float (&o)[8][8], const float (&c_run)[4],
                                           const float (&m_run)[4], const float (&total)[4], float scale_log2) {
  const int rows_total = p.s_q * p.h_q;
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    const int n = l.col(c);
    if (n >= rows_total) continue;
    const bool seen = total[c] != 0.f;  // a NaN sum counts as seen, so that the NaN reaches out and lse
    float inv = seen ? 1.f / total[c] : 0.f;
    float lse_value = seen ? (m_run[c] * scale_log2 + log2f(total[c])) * 0.6931471805599453f
                           : (slot.direct ? INFINITY : -INFINITY);
    if (poison) inv = lse_value = NAN;
    const int64_t row = slot.direct ? static_cast<int64_t>(w.batch) * rows_total + n
                                    : static_cast<int64_t>(slot.split_row) * rows_total + n;
    const int i0 = 4 * (c / 2) + (c % 2), i1 = i0 + 2;  // rows i = 0, 1 of column c
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const float f = c_run[b] * inv;
      const float v0 = o[2 * b][i0] * f, v1 = o[2 * b][i1] * f, v2 = o[2 * b + 1][i0] * f, v3 = o[2 * b + 1][i1] * f;
      const int col = 128 * b + 4 * (8 * l.w + l.r);
      if (slot.direct) {
        *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(p.out) + row * kHeadDimV + col) =
            make_uint2(ElemTraits<__nv_bfloat16>::pack(v0, v1), ElemTraits<__nv_bfloat16>::pack(v2, v3));
      } else {
        *reinterpret_cast<float4*>(p.o_accum + row * kHeadDimV + col) = make_float4(v0, v1, v2, v3);
      }
    }
    if (l.w == 0 && l.r == 0) {
      if (slot.direct) {
        const int token = n / p.h_q, head = n % p.h_q;
        p.lse[(static_cast<int64_t>(w.batch) * p.h_q + head) * p.s_q + token] = lse_value;
      } else {
        p.lse_accum[row] = lse_value;
      }
    }
  }
}

__device__ __forceinline__ void consume(const MlaDecodeParams& p, const PartWalker& walker, uint8_t* smem,
                                        uint32_t base) {
  const Lane l;
  const int rows_total = p.s_q * p.h_q;
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
  float* exchange = reinterpret_cast<float*>(smem + Layout::exchange);
  float* q_unscale = reinterpret_cast<float*>(smem + Layout::q_unscale);
  float* sums = reinterpret_cast<float*>(smem + Layout::sums);
  uint32_t count = 0, items = 0;
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
    // The previous item's reads of Q and of the row sums are behind every thread (its epilogue's barrier).
    load_q(p, smem, base, q_unscale, items & 1);
    ++items;
    fence_proxy_async_smem();
    named_barrier_sync(kBarQ, kConsumerThreads);
    float unscale[4];
    int key_limit[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int n = l.col(c);
      unscale[c] = q_unscale[n];
      const int token = min(n, rows_total - 1) / p.h_q;
      key_limit[c] = p.causal ? w.seqlen - p.s_q + token + 1 : w.seqlen;
    }
    const int min_limit = p.causal ? w.seqlen - p.s_q + 1 : w.seqlen;

    float o[8][8];
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int i = 0; i < 8; ++i) o[j][i] = 0.f;
    float m_run[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    float l_sum[4] = {0.f, 0.f, 0.f, 0.f};  // this thread's partial column sums (its two tokens of every page)
    float c_run[4] = {0.f, 0.f, 0.f, 0.f};

    for (int blk = w.start_block; blk < w.stop_block; ++blk, ++count) {
      const int slot_index = count % kSlots;
      const uint32_t slot_addr = base + Layout::slots + slot_index * kSlotBytes;
      mbarrier_wait(full_bar(base, slot_index), (count / kSlots) & 1);
      float s[4][8], s_rope[8];
      scores(s, s_rope, slot_addr, base, l);
      float scale[2][4];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float4 v = *reinterpret_cast<const float4*>(smem + Layout::slots + slot_index * kSlotBytes +
                                                          kLatentBytes + kRopeBytes + (l.t0 + 8 * half) * 16);
        scale[half][0] = v.x;
        scale[half][1] = v.y;
        scale[half][2] = v.z;
        scale[half][3] = v.w;
      }
      // Keys past the end (and, causal, past each row's last visible key) and the zero rows of a last page loaded
      // shifted (page_tail_shift) get -inf.
      const int shift = page_tail_shift(blk, w.seqlen);
      const bool masked_page = blk * kPageSize + kPageSize > min_limit;
      float sc[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int half = acc_half(i), c = acc_col(i);
        const float* sh = scale[half];
        sc[i] = (s[0][i] * sh[0] + s[1][i] * sh[1] + s[2][i] * sh[2] + s[3][i] * sh[3]) * unscale[c] + s_rope[i];
        if (masked_page) {
          const int row = l.t0 + 8 * half;
          const int token = blk * kPageSize - shift + row;
          if (row < shift || token >= key_limit[c]) sc[i] = -INFINITY;
        }
      }
      // Column maxima and the page's largest scale per group, over the warp, then over the four warps.
      float page_max[4], page_scale[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) page_max[c] = -INFINITY;
#pragma unroll
      for (int i = 0; i < 8; ++i) page_max[acc_col(i)] = fmaxf(page_max[acc_col(i)], sc[i]);
#pragma unroll
      for (int c = 0; c < 4; ++c) page_max[c] = max_over_rows(page_max[c]);
#pragma unroll
      for (int b = 0; b < 4; ++b) page_scale[b] = max_over_rows(fmaxf(scale[0][b], scale[1][b]));
      float* x = exchange + (count & 1) * 4 * kExchangeFloats;
      if (l.r == 0) {
#pragma unroll
        for (int c = 0; c < 4; ++c) x[l.w * kExchangeFloats + l.col(c)] = page_max[c];
        if (l.q == 0)
#pragma unroll
          for (int b = 0; b < 4; ++b) x[l.w * kExchangeFloats + kRows + b] = page_scale[b];
      }
      named_barrier_sync(kBarExchange, kConsumerThreads);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float m = x[l.col(c)];
#pragma unroll
        for (int v = 1; v < 4; ++v) m = fmaxf(m, x[v * kExchangeFloats + l.col(c)]);
        page_max[c] = m;
      }
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        float m = x[kRows + b];
#pragma unroll
        for (int v = 1; v < 4; ++v) m = fmaxf(m, x[v * kExchangeFloats + kRows + b]);
        page_scale[b] = m;
      }
      // Online softmax down the columns (seesaw_lazy_max: exact, the running max moves only past a 2^8 margin).
      float alpha[4], m_scaled[4];
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float m_new = seesaw_lazy_max(m_run[c], page_max[c], scale_log2);
        alpha[c] = seesaw_rescale(m_run[c], m_new, scale_log2);
        m_run[c] = m_new;
        m_scaled[c] = m_new == -INFINITY ? 0.f : m_new * scale_log2;
        l_sum[c] *= alpha[c];
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        sc[i] = exp2f(sc[i] * scale_log2 - m_scaled[acc_col(i)]);
        l_sum[acc_col(i)] += sc[i];
      }
      float weight[4][2];  // scale(token, b) / C_b for the lane's two tokens
      bool rescale = false;
      float ratio[4];
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const float c_new = lazy_group_scale(c_run[b], page_scale[b]);
        ratio[b] = c_new == c_run[b] ? 1.f : c_run[b] / c_new;
        c_run[b] = c_new;
        const float inv = c_new > 0.f ? 1.f / c_new : 0.f;
        weight[b][0] = scale[0][b] * inv;
        weight[b][1] = scale[1][b] * inv;
        rescale |= ratio[b] != 1.f;
      }
#pragma unroll
      for (int c = 0; c < 4; ++c) rescale |= alpha[c] != 1.f;
      if (__any_sync(0xffffffff, rescale)) {
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
          for (int i = 0; i < 8; ++i) o[j][i] *= alpha[acc_col(i)] * ratio[j / 2];
      }
      // P'_b = P * scale / C_b, f16, into the B operand of group b: stmatrix .trans of the four 8 x 8 blocks
      // (tokens t0 / t1 block x columns 0..7 / 8..15), lane (matrix lane / 8, row lane % 8) addressing one row.
      const int lane = threadIdx.x % 32, mi = lane / 8;
      const uint32_t p_row = swizzle_128b_offset(8 * (mi / 2) + lane % 8, 2 * l.w + (mi & 1));
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        uint32_t v[4];
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          const float wt = weight[b][m % 2];  // matrix m: tokens t0 (even m) or t1, columns 8 (m / 2) + ...
          v[m] = ElemTraits<__half>::pack(sc[2 * m] * wt, sc[2 * m + 1] * wt);
        }
        stmatrix_x4_trans(base + Layout::p + b * kOperandBytes + p_row, v);
      }
      fence_proxy_async_smem();
      named_barrier_sync(kBarP, kConsumerThreads);
      values(o, slot_addr, base, l, empty_bar(base, slot_index));
    }

    float total[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const float part = sum_over_rows(l_sum[c]);
      if (l.r == 0) sums[l.w * kRows + l.col(c)] = part;
    }
    named_barrier_sync(kBarSums, kConsumerThreads);
#pragma unroll
    for (int c = 0; c < 4; ++c)
      total[c] = sums[l.col(c)] + sums[kRows + l.col(c)] + sums[2 * kRows + l.col(c)] + sums[3 * kRows + l.col(c)];
    store_item(p, w, slot, poison, l, o, c_run, m_run, total, scale_log2);
    // The sums and Q are rewritten only after every thread's reads of them.
    named_barrier_sync(kBarSums, kConsumerThreads);
  }
}

// latent_map: the page's latent bytes ({128, 64 tokens, pages, 4 groups}, 128B-swizzled); rope_map: its bf16 rope
// values ({64, 64 tokens, pages}, 128B-swizzled); scale_map: its scales ({4, 64 tokens, pages}): mla_decode_kernel.cu.
__global__ void __launch_bounds__(kThreads, 1)
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
    for (int s = 0; s < kSlots; ++s) {
      mbarrier_init(full_bar(base, s), 1);
      mbarrier_init(empty_bar(base, s), kConsumerThreads / 32);
    }
    mbarrier_init(q_full_bar(base), 1);
    mbarrier_init(q_empty_bar(base), kConsumerThreads / 32);
    fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x >= kConsumerThreads) {
    if (threadIdx.x == kConsumerThreads) {
      prefetch_tensor_map(&latent_map);
      prefetch_tensor_map(&rope_map);
      prefetch_tensor_map(&scale_map);
      produce(params, walker, base, &latent_map, &rope_map, &scale_map);
    }
    return;
  }
  consume(params, walker, aligned.ptr, base);
}

}  // namespace fp8_narrow
}  // namespace decode_detail
}  // namespace hf_flashmla
