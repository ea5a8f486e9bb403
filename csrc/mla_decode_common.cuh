// Building blocks of the decode kernel (mla_decode_seesaw.cuh): tile constants, the walk over a part's schedule,
// the element-type traits (wgmma shapes per dtype) and the epilogue that writes a finished tile.
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

// The dynamic shared memory rounded up to 1024 bytes, which the 128-byte swizzle atoms of TMA and wgmma need
// (the kernels request 1 KB of slack for it): generic pointer and shared-window address.
struct AlignedSmem {
  uint8_t* ptr;
  uint32_t addr;
};
__device__ __forceinline__ AlignedSmem align_swizzle_atoms(uint8_t* raw) {
  const uint32_t raw_addr = smem_addr(raw);
  const uint32_t addr = (raw_addr + 1023) & ~1023u;
  return AlignedSmem{raw + (addr - raw_addr), addr};
}

// The kernel's role split: thread 0 initialises the CTA's mbarriers (init_barriers), then the
// producer warpgroup hands its registers to the consumers and produces, while the two consumer warpgroups compute
// (consume). Register split, measured in cycles at locked base clock: consumers 232 (224: +4.2% cycles, 240: +2%),
// producer 24 (40: +0.8%; its one issuing thread needs few). With kWholeProducer (the FP8 feed) every producer
// thread runs produce and dequantises: 56 registers, the fewest it needs without spills (40: 64 bytes spilled, 48:
// 28), so the consumers take 224 (224 x 256 + 56 x 128 = 168 x 384).
template <bool kWholeProducer, class InitBarriers, class Produce, class Consume>
__device__ __forceinline__ void run_producer_and_consumers(InitBarriers init_barriers, Produce produce,
                                                           Consume consume) {
  if (threadIdx.x == 0) {
    init_barriers();
    fence_mbarrier_init();
  }
  __syncthreads();
  if (threadIdx.x >= kConsumerThreads) {
    if constexpr (kWholeProducer) {
      setmaxnreg_dec<56>();
      produce();
    } else {
      setmaxnreg_dec<24>();
      if (threadIdx.x == kConsumerThreads) produce();
    }
  } else {
    if constexpr (kWholeProducer) setmaxnreg_inc<224>();
    else setmaxnreg_inc<232>();
    consume();
  }
}

// One (sequence, page range) item of a part's work, as the schedule defines it.
struct WorkItem {
  int batch, start_block, stop_block, split_index, seqlen;
};

// The last page of a sequence whose length is not a multiple of 64 holds tokens past the length: in a pool that is
// not cleared, or pages recycled from another sequence, any bits (NaN included). Masking their scores is not enough,
// since P V multiplies their values by P = 0, and 0 * NaN is NaN inside the MMA. So that page is loaded shifted:
// its token 0 lands in row page_tail_shift(...) of the stage, and the rows above, outside the tensor map, are
// zero-filled by TMA. The consumers mask those rows (seesaw_mask). Full pages have shift 0: no extra work there.
__host__ __device__ __forceinline__ int page_tail_shift(int block, int seqlen) {
  return min(max((block + 1) * kPageSize - seqlen, 0), kPageSize);
}

struct PartWalker {
  int begin_batch, begin_block, end_batch, end_block, begin_split;
  const int* seqlens;
  __device__ PartWalker(const int* row, const int* lengths)
      : begin_batch(row[0]), begin_block(row[1]), end_batch(row[2]), end_block(row[3]), begin_split(row[4]),
        seqlens(lengths) {}
  __device__ int num_items() const { return end_batch - begin_batch + 1; }
  // A part whose row says it has no pages at all (a schedule's spare parts: one sequence, start == stop).
  __device__ bool empty_by_metadata() const { return begin_batch == end_batch && begin_block >= end_block; }
  // Where the part starts in sequence `batch`: known from the metadata row alone, before the length is read.
  __device__ int start_block(int batch) const { return batch == begin_batch ? begin_block : 0; }
  __device__ WorkItem item(int batch) const {
    const int num_blocks = (max(seqlens[batch], 0) + kPageSize - 1) / kPageSize;
    WorkItem w;
    w.seqlen = seqlens[batch];
    w.batch = batch;
    w.start_block = start_block(batch);
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
  static __device__ __forceinline__ float2 unpack(uint32_t v) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v));
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
  static __device__ __forceinline__ float2 unpack(uint32_t v) {
    return __half22float2(*reinterpret_cast<const __half2*>(&v));
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

// The online softmax's running max, shared by the decode kernels (mla_decode_seesaw.cuh, mla_decode_fp8_narrow.cuh).
// exp2 factor taking values relative to m_old to values relative to m_new; a row that has seen no key
// (m = -inf) keeps factor 1 so that nothing becomes NaN.
__device__ __forceinline__ float seesaw_rescale(float m_old, float m_new, float scale_log2) {
  return m_new == -INFINITY ? 1.f : exp2f((m_old - m_new) * scale_log2);
}

// Lazy rescaling: the running row max that P and O are relative to moves only when a page's max exceeds it by more
// than 2^kLazyRescaleLog2 (after the softmax scale), so P stays <= 256 (exact in bf16/fp16 up to their rounding, sums
// and O in fp32) and the factor exp2(m_old - m_new) is exactly 1 on nearly every page: the 128-register O rescale,
// on each warpgroup's path to its next P V issue twice per pair, is skipped (seesaw_scale_o). Every use of the
// running max (exps, factors, the final lse) takes this same value, so the result is exact, not approximate.
constexpr float kLazyRescaleLog2 = 8.f;

// The new running max. m_run = -inf (no key yet) takes any finite page max; a page with no visible key
// (m_page = -inf) leaves it (the NaN of -inf - -inf compares false).
__device__ __forceinline__ float seesaw_lazy_max(float m_run, float m_page, float scale_log2) {
  return (m_page - m_run) * scale_log2 > kLazyRescaleLog2 ? m_page : m_run;
}

// Whether the length of sequence `batch` changed since its schedule was computed (p.current_seqlens): its out and lse
// are then written as NaN, since the schedule no longer covers its pages. The schedule and the walk keep to the
// lengths they were computed for, so every output row is still written and nothing outside the cache is read.
__device__ __forceinline__ bool length_changed(const MlaDecodeParams& p, int batch) {
  return p.current_seqlens != nullptr && p.current_seqlens[batch] != p.seqlens[batch];
}

// Where a finished tile goes: straight to out/lse when the sequence has one split, else to split row
// `split_row` of the workspace. Read at the start of an item, so the loads are done by the epilogue.
struct OutputSlot {
  int split_row;
  bool direct;
};
__device__ __forceinline__ OutputSlot output_slot(const MlaDecodeParams& p, const WorkItem& w) {
  const int split_base = p.num_splits[w.batch];
  return OutputSlot{split_base + w.split_index, p.num_splits[w.batch + 1] - split_base == 1};
}

// What the consumers need to start an item, read one item ahead: these dependent global loads (the part's next
// sequence, its length, its split counts) took ~1800 SM clocks at every item boundary when read there.
struct ItemPlan {
  WorkItem w;
  OutputSlot slot;
  bool length_changed;
};
__device__ __forceinline__ ItemPlan load_item_plan(const MlaDecodeParams& p, const PartWalker& walker, int k) {
  ItemPlan plan;
  plan.w = walker.item(walker.begin_batch + k);
  plan.slot = output_slot(p, plan.w);
  plan.length_changed = length_changed(p, plan.w.batch);
  return plan;
}

// 4 x 4 transpose of 32-bit values within each quad of lanes: on entry lane q holds v[t] = M[q][t], on exit
// v[s] = M[s][q]. Two butterfly exchanges (lane bit 0, then bit 1), two shuffles each.
__device__ __forceinline__ void quad_transpose(uint32_t (&v)[4]) {
  const int q = threadIdx.x & 3;
  const bool b0 = q & 1, b1 = q & 2;
  // Stage 1 (partner q ^ 1): afterwards a_xy = M[(q & 2) | x][2y | b0], the rows of this lane's pair in the
  // columns that share its bit 0.
  const uint32_t got0 = __shfl_xor_sync(0xffffffff, b0 ? v[0] : v[1], 1);  // M[q ^ 1][b0]
  const uint32_t got1 = __shfl_xor_sync(0xffffffff, b0 ? v[2] : v[3], 1);  // M[q ^ 1][2 + b0]
  const uint32_t own0 = b0 ? v[1] : v[0], own1 = b0 ? v[3] : v[2];
  const uint32_t a00 = b0 ? got0 : own0, a10 = b0 ? own0 : got0;
  const uint32_t a01 = b0 ? got1 : own1, a11 = b0 ? own1 : got1;
  // Stage 2: send the column half y != bit 1 of q to lane q ^ 2, keep y == bit 1.
  const uint32_t send0 = b1 ? a00 : a01, send1 = b1 ? a10 : a11;
  const uint32_t keep0 = b1 ? a01 : a00, keep1 = b1 ? a11 : a10;
  const uint32_t recv0 = __shfl_xor_sync(0xffffffff, send0, 2);  // M[(q ^ 2) & 2 | 0][q]
  const uint32_t recv1 = __shfl_xor_sync(0xffffffff, send1, 2);  // M[(q ^ 2) & 2 | 1][q]
  v[0] = b1 ? recv0 : keep0;
  v[1] = b1 ? recv1 : keep1;
  v[2] = b1 ? keep0 : recv0;
  v[3] = b1 ? keep1 : recv1;
}

__device__ __forceinline__ void store_global_v4(void* ptr, const uint32_t (&v)[4]) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(ptr), "r"(v[0]), "r"(v[1]), "r"(v[2]), "r"(v[3])
               : "memory");
}

// Writes one warpgroup's half of a finished 64-row tile: normalised output and lse straight to `out`/`lse`
// when the sequence has one split, else to the split workspace (fp32 partials and lse) for the combine kernel.
// total[h] is the full row sum (both halves) of row row0 + 8h; o holds columns 256wg .. 256wg+255, thread
// column 2 (lane % 4) + 8j in o[4j..4j+3]. For the 16-bit output a quad's four lanes hold 8 adjacent columns of
// a row (4 bytes each); transposing 4 x 4 blocks within the quad gives each lane 8 whole columns, so each store
// is 16 bytes instead of 4: a store instruction touches 8 rows either way, and the epilogue was bound by the
// number of instructions (~5 us per item at s_q * h_q = 256 with 4-byte stores, 2.2x faster with 16-byte ones).
// poison: length_changed for this sequence (every value written is NaN).
template <typename Elem>
__device__ __forceinline__ void store_tile(const MlaDecodeParams& p, const WorkItem& w, const OutputSlot& slot,
                                           int m_block, int wg, int row0, const float (&o)[128],
                                           const float (&row_m)[2], const float (&total)[2], float scale_log2,
                                           bool poison) {
  using Traits = ElemTraits<Elem>;
  const int rows_total = p.s_q * p.h_q;
  const int lane = threadIdx.x % 32;
  const int q = lane & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = row0 + 8 * h;
    const int grow = m_block * kTileRows + r;
    // Rows past rows_total still take part in the shuffles (whole quads share a row, so a quad is uniform).
    const bool row_valid = grow < rows_total;
    // A row saw a key iff its sum is not 0 (the largest term is exp(0) = 1 or more). A NaN sum (NaN in q or in a
    // visible key) counts as seen, so that the NaN reaches out and lse rather than turning into "no key".
    const bool seen = total[h] != 0.f;
    float inv = seen ? 1.f / total[h] : 0.f;
    float lse_value;
    if (seen) lse_value = (row_m[h] * scale_log2 + log2f(total[h])) * 0.6931471805599453f;
    else lse_value = slot.direct ? INFINITY : -INFINITY;  // partials with no keys carry no weight
    if (poison) inv = lse_value = NAN;
    const int64_t row = slot.direct ? static_cast<int64_t>(w.batch) * rows_total + grow
                                    : static_cast<int64_t>(slot.split_row) * rows_total + grow;
    const int col_base = wg * kOutColsPerWarpgroup;
    if (!slot.direct) {
      // Partials stay fp32: rounding them to the output's dtype as well would round each output twice (with
      // bf16 partials the error against a float32 reference was 1.6x FlashMLA's on split varlen configs). A quad's
      // 8-byte stores already fill one 32-byte sector per row (16-byte stores after a transpose wrote half
      // sectors per instruction and were slower).
      float* acc_row = static_cast<float*>(p.o_accum) + row * kHeadDimV + col_base;
      if (row_valid) {
#pragma unroll
        for (int j = 0; j < 32; ++j)
          *reinterpret_cast<float2*>(acc_row + 8 * j + 2 * q) =
              make_float2(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
      }
    } else {
      Elem* dst_row = static_cast<Elem*>(p.out) + row * kHeadDimV + col_base;
#pragma unroll
      for (int jj = 0; jj < 8; ++jj) {
        uint32_t v[4];
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          const int j = 4 * jj + t;
          v[t] = Traits::pack(o[4 * j + 2 * h] * inv, o[4 * j + 2 * h + 1] * inv);
        }
        quad_transpose(v);  // now columns 8 (4jj + q) .. + 7
        if (row_valid) store_global_v4(dst_row + 8 * (4 * jj + q), v);
      }
    }
    if (row_valid && wg == 0 && q == 0) {
      if (slot.direct) {
        const int token = grow / p.h_q, head = grow % p.h_q;
        p.lse[(static_cast<int64_t>(w.batch) * p.h_q + head) * p.s_q + token] = lse_value;
      } else {
        p.lse_accum[row] = lse_value;
      }
    }
  }
}

}  // namespace decode_detail
}  // namespace hf_flashmla
