// Pieces both decode kernels share: tile constants, the walk over a part's schedule, the element-type
// traits (wgmma shapes per dtype) and the epilogue that writes a finished tile.
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "mla_decode.h"
#include "ptx_helpers.cuh"
#include "wgmma_ops.cuh"

namespace hf_flashmla {
namespace decode_detail {

constexpr int kChunkCols = 64;                               // columns per 128-byte swizzle tile
constexpr int kNumChunks = kHeadDim / kChunkCols;            // 9
constexpr int kChunkBytes = kTileRows * kChunkCols * 2;      // 8192
constexpr int kTileBytes = kNumChunks * kChunkBytes;         // 73728: a Q tile or a KV page
constexpr int kNumStages = 2;
constexpr int kConsumerThreads = 256;
constexpr int kThreads = 384;
constexpr int kOutColsPerWarpgroup = kHeadDimV / 2;          // 256

// One (sequence, page range) item of a part's work, as the schedule defines it.
struct WorkItem {
  int batch, start_block, stop_block, split_index;
};

struct PartWalker {
  int begin_batch, begin_block, end_batch, end_block, begin_split;
  const int* cache_seqlens;
  __device__ PartWalker(const int* row, const int* seqlens)
      : begin_batch(row[0]), begin_block(row[1]), end_batch(row[2]), end_block(row[3]), begin_split(row[4]),
        cache_seqlens(seqlens) {}
  __device__ WorkItem item(int batch) const {
    int num_blocks = (max(cache_seqlens[batch], 0) + kPageSize - 1) / kPageSize;
    WorkItem w;
    w.batch = batch;
    w.start_block = batch == begin_batch ? begin_block : 0;
    w.stop_block = batch == end_batch ? end_block : num_blocks;
    w.split_index = batch == begin_batch ? begin_split : 0;
    return w;
  }
};

template <typename Elem>
struct ElemTraits;
template <>
struct ElemTraits<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ void mma_qk(float (&d)[16], uint64_t a, uint64_t b, int scale_d) {
    wgmma_m64n32k16_ss_bf16(d, a, b, scale_d);
  }
  static __device__ __forceinline__ void mma_pv(float (&d)[128], uint64_t a, uint64_t b) {
    wgmma_m64n256k16_ss_bf16_tb(d, a, b, 1);
  }
  static __device__ __forceinline__ void mma_qk_page(float (&d)[32], uint64_t a, uint64_t b, int scale_d) {
    wgmma_m64n64k16_ss_bf16(d, a, b, scale_d);
  }
  static __device__ __forceinline__ void mma_pv_regs(float (&d)[128], const uint32_t* a, uint64_t b) {
    wgmma_m64n256k16_rs_bf16_tb(d, a[0], a[1], a[2], a[3], b, 1);
  }
  static __device__ __forceinline__ void mma_qk_page_regs(float (&d)[32], const uint32_t* a, uint64_t b, int scale_d) {
    wgmma_m64n64k16_rs_bf16(d, a[0], a[1], a[2], a[3], b, scale_d);
  }
};
template <>
struct ElemTraits<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
  static __device__ __forceinline__ void mma_qk(float (&d)[16], uint64_t a, uint64_t b, int scale_d) {
    wgmma_m64n32k16_ss_f16(d, a, b, scale_d);
  }
  static __device__ __forceinline__ void mma_pv(float (&d)[128], uint64_t a, uint64_t b) {
    wgmma_m64n256k16_ss_f16_tb(d, a, b, 1);
  }
  static __device__ __forceinline__ void mma_qk_page(float (&d)[32], uint64_t a, uint64_t b, int scale_d) {
    wgmma_m64n64k16_ss_f16(d, a, b, scale_d);
  }
  static __device__ __forceinline__ void mma_pv_regs(float (&d)[128], const uint32_t* a, uint64_t b) {
    wgmma_m64n256k16_rs_f16_tb(d, a[0], a[1], a[2], a[3], b, 1);
  }
  static __device__ __forceinline__ void mma_qk_page_regs(float (&d)[32], const uint32_t* a, uint64_t b, int scale_d) {
    wgmma_m64n64k16_rs_f16(d, a[0], a[1], a[2], a[3], b, scale_d);
  }
};

// Writes one warpgroup's half of a finished 64-row tile: normalised output and lse straight to `out`/`lse`
// when the sequence has one split, else to the split workspace for the combine kernel.
// total[h] is the full row sum (both halves) of row row0 + 8h; o holds columns 256wg .. 256wg+255.
template <typename Elem>
__device__ __forceinline__ void store_tile(const MlaDecodeParams& p, const WorkItem& w, int m_block, int wg, int row0,
                                           int quad_col, const float (&o)[128], const float (&row_m)[2],
                                           const float (&total)[2], float scale_log2) {
  using Traits = ElemTraits<Elem>;
  const int batch = w.batch;
  const int rows_total = p.s_q * p.h_q;
  const int split_base = p.num_splits[batch];
  const bool direct = p.num_splits[batch + 1] - split_base == 1;
  const int split_row = split_base + w.split_index;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = row0 + 8 * h;
    const int grow = m_block * kTileRows + r;
    if (grow >= rows_total) continue;
    const float inv = total[h] > 0.f ? 1.f / total[h] : 0.f;
    float lse_value;
    if (total[h] > 0.f) lse_value = (row_m[h] * scale_log2 + log2f(total[h])) * 0.6931471805599453f;
    else lse_value = direct ? INFINITY : -INFINITY;  // partials with no keys carry no weight
    const int col_base = wg * kOutColsPerWarpgroup + quad_col;
    if (direct) {
      Elem* out_row = static_cast<Elem*>(p.out) + (static_cast<int64_t>(batch) * rows_total + grow) * kHeadDimV;
#pragma unroll
      for (int j = 0; j < 32; ++j)
        *reinterpret_cast<uint32_t*>(out_row + col_base + 8 * j) =
            Traits::pack(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
      if (wg == 0 && lane % 4 == 0) {
        const int token = grow / p.h_q, head = grow % p.h_q;
        p.lse[(static_cast<int64_t>(batch) * p.h_q + head) * p.s_q + token] = lse_value;
      }
    } else {
      float* acc_row = p.o_accum + (static_cast<int64_t>(split_row) * rows_total + grow) * kHeadDimV;
#pragma unroll
      for (int j = 0; j < 32; ++j)
        *reinterpret_cast<float2*>(acc_row + col_base + 8 * j) =
            make_float2(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
      if (wg == 0 && lane % 4 == 0) p.lse_accum[static_cast<int64_t>(split_row) * rows_total + grow] = lse_value;
    }
  }
}

}  // namespace decode_detail
}  // namespace hf_flashmla
