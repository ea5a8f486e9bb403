// The "split" decode kernel: both consumer warpgroups work on every page (half of S each).
//
// One CTA = one 64-row query tile (s_q * h_q rows folded) x one SM part of the tile schedule.
// Warpgroups 0 and 1 compute; warpgroup 2 is the TMA producer (one thread).
// Per KV page (64 tokens x 576), consumer warpgroup w:
//   S_w  = Q[64 x 576] . K[32w .. 32w+32)^T        (wgmma m64n32k16, both operands from smem)
//   row max exchanged through smem, P = exp(S - m) written to smem as bf16/fp16 (both halves)
//   O_w += P[64 x 64] . V[64 x 256w .. 256w+256)     (wgmma m64n256k16, V read MN-major)
// Each warpgroup holds half of the 64 x 512 fp32 output (128 registers per thread) and does half of
// both matrix products, so the two stay balanced. Pages stream through two TMA stages (the Q tile and
// two 72 KB pages fill the 227 KB of shared memory). FlashMLA's "seesaw" split (warpgroups alternate
// pages) is the other kernel, mla_decode_seesaw.cuh; notes/KERNEL_LOG.md has both measured.
#pragma once
#include "mla_decode_common.cuh"

namespace hf_flashmla {
namespace decode_detail {

constexpr int kTokensPerWarpgroup = kPageSize / 2;           // 32 columns of S per warpgroup

struct SplitLayout {
  static constexpr int q = 0;
  static constexpr int kv = q + kTileBytes;
  static constexpr int p = kv + kNumStages * kTileBytes;
  static constexpr int row_max = p + kChunkBytes;            // float [2][64]
  static constexpr int row_sum = row_max + 2 * kTileRows * 4;  // float [2][64]
  static constexpr int barriers = row_sum + 2 * kTileRows * 4;
  // q_full, q_empty, kv_full[2][9] (one per 64-column chunk), kv_empty[2]
  static constexpr int total = barriers + 8 * (2 + kNumStages * kNumChunks + kNumStages);
};
constexpr int kSplitSmemBytes = SplitLayout::total + 1024;  // + alignment slack for the 1024-byte swizzle atoms

// A page lands as nine 64-column chunks, each on its own barrier, so Q K^T starts on the first chunk
// while the rest are still in flight (with two stages the load of a page is otherwise exposed).
struct SplitBarriers {
  uint32_t q_full, q_empty, kv_full_base, kv_empty_base;
  __device__ explicit SplitBarriers(uint32_t base)
      : q_full(base), q_empty(base + 8), kv_full_base(base + 16),
        kv_empty_base(base + 16 + 8 * kNumStages * kNumChunks) {}
  __device__ uint32_t kv_full(int stage, int chunk) const { return kv_full_base + 8 * (stage * kNumChunks + chunk); }
  __device__ uint32_t kv_empty(int stage) const { return kv_empty_base + 8 * stage; }
};
__device__ __forceinline__ void split_producer_loop(const MlaDecodeParams& p, const CUtensorMap* q_map,
                                              const CUtensorMap* kv_map, const PartWalker& walker,
                                              const SplitBarriers& bars, uint32_t q_smem, uint32_t kv_smem,
                                              int m_block) {
  int item_count = 0, page_count = 0;
  for (int batch = walker.begin_batch; batch <= walker.end_batch; ++batch) {
    WorkItem w = walker.item(batch);
    if (w.stop_block <= w.start_block) continue;
    mbarrier_wait(bars.q_empty, (item_count & 1) ^ 1);
    mbarrier_arrive_expect_tx(bars.q_full, kTileBytes);
#pragma unroll
    for (int c = 0; c < kNumChunks; ++c)
      tma_load_3d(q_smem + c * kChunkBytes, q_map, bars.q_full, c * kChunkCols, m_block * kTileRows, batch);
    ++item_count;
    const int* table_row = p.block_table + static_cast<int64_t>(batch) * p.block_table_stride;
    for (int blk = w.start_block; blk < w.stop_block; ++blk, ++page_count) {
      int stage = page_count & 1;
      mbarrier_wait(bars.kv_empty(stage), ((page_count >> 1) & 1) ^ 1);
      // Never read past the block table's row (lengths beyond it are a caller error the Python layer
      // reports when value checks are on); an out-of-pool page id makes TMA fill zeros, not fault.
      int page = blk < p.max_blocks_per_seq ? __ldg(table_row + blk) : -1;
      uint32_t dst = kv_smem + stage * kTileBytes;
#pragma unroll
      for (int c = 0; c < kNumChunks; ++c) {
        mbarrier_arrive_expect_tx(bars.kv_full(stage, c), kChunkBytes);
        tma_load_2d(dst + c * kChunkBytes, kv_map, bars.kv_full(stage, c), c * kChunkCols, page * kPageSize);
      }
    }
  }
}

template <typename Elem>
__device__ __forceinline__ void split_consumer_loop(const MlaDecodeParams& p, const PartWalker& walker,
                                              const SplitBarriers& bars, uint8_t* smem, uint32_t smem_base,
                                              int m_block) {
  using Traits = ElemTraits<Elem>;
  const int tid = threadIdx.x;               // 0..255
  const int wg = tid / 128;                  // consumer warpgroup: which 32 tokens of S, which 256 columns of O
  const int warp_in_wg = (tid % 128) / 32;
  const int lane = tid % 32;
  const int row0 = warp_in_wg * 16 + lane / 4;  // this thread's two tile rows: row0 and row0 + 8
  const int quad_col = 2 * (lane % 4);

  const uint32_t q_smem = smem_base + SplitLayout::q;
  const uint32_t kv_smem = smem_base + SplitLayout::kv;
  const uint32_t p_smem = smem_base + SplitLayout::p;
  float* row_max_smem = reinterpret_cast<float*>(smem + SplitLayout::row_max);
  float* row_sum_smem = reinterpret_cast<float*>(smem + SplitLayout::row_sum);

  const int rows_total = p.s_q * p.h_q;
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
  const uint64_t q_desc = smem_desc_sw128(q_smem, 16, 1024);
  const uint64_t p_desc = smem_desc_sw128(p_smem, 16, 1024);

  int item_count = 0, page_count = 0;
  for (int batch = walker.begin_batch; batch <= walker.end_batch; ++batch) {
    WorkItem w = walker.item(batch);
    if (w.stop_block <= w.start_block) continue;
    const int seqlen = p.cache_seqlens[batch];
    const OutputSlot slot = output_slot(p, w);
    // Number of keys each of this thread's rows may see (causal: the queries are the last s_q tokens).
    int key_limit[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int grow = m_block * kTileRows + row0 + 8 * h;
      int token = min(grow, rows_total - 1) / p.h_q;
      key_limit[h] = p.causal ? seqlen - p.s_q + token + 1 : seqlen;
    }
    const int min_limit = p.causal ? seqlen - p.s_q + 1 : seqlen;

    float o[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i] = 0.f;
    float row_m[2] = {-INFINITY, -INFINITY};
    float row_l[2] = {0.f, 0.f};

    mbarrier_wait(bars.q_full, item_count & 1);
    ++item_count;

    for (int blk = w.start_block; blk < w.stop_block; ++blk, ++page_count) {
      const int stage = page_count & 1;
      const uint32_t kv_stage = kv_smem + stage * kTileBytes;
      const uint32_t stage_parity = (page_count >> 1) & 1;

      float s[16];
      wgmma_fence();
      {
        const uint64_t k_desc = smem_desc_sw128(kv_stage + wg * kTokensPerWarpgroup * 128, 16, 1024);
#pragma unroll
        for (int c = 0; c < kNumChunks; ++c) {
          mbarrier_wait(bars.kv_full(stage, c), stage_parity);
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) {
            const uint32_t off = (c * kChunkBytes + kk * 32) >> 4;
            Traits::mma_qk(s, q_desc + off, k_desc + off, (c | kk) != 0);
          }
        }
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_accumulators(s);
      if (blk == w.stop_block - 1 && lane == 0) mbarrier_arrive(bars.q_empty);

      // Mask keys past the sequence end and, for causal, past each row's last visible key.
      const int token_base = blk * kPageSize + wg * kTokensPerWarpgroup;
      if (token_base + kTokensPerWarpgroup > min_limit) {
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            int token = token_base + 8 * j + quad_col + (e & 1);
            if (token >= key_limit[e >> 1]) s[4 * j + e] = -INFINITY;
          }
      }

      float local_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) local_max[e >> 1] = fmaxf(local_max[e >> 1], s[4 * j + e]);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        local_max[h] = fmaxf(local_max[h], __shfl_xor_sync(0xffffffff, local_max[h], 1));
        local_max[h] = fmaxf(local_max[h], __shfl_xor_sync(0xffffffff, local_max[h], 2));
      }
      if (lane % 4 == 0) {
        row_max_smem[wg * kTileRows + row0] = local_max[0];
        row_max_smem[wg * kTileRows + row0 + 8] = local_max[1];
      }
      named_barrier_sync(1, kConsumerThreads);

      float rescale[2], m_scaled[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        int r = row0 + 8 * h;
        float page_max = fmaxf(row_max_smem[r], row_max_smem[kTileRows + r]);
        float m_new = fmaxf(row_m[h], page_max);
        // A row that has seen no key yet keeps m = -inf; exponentiate against 0 so that exp(-inf) = 0.
        rescale[h] = m_new == -INFINITY ? 1.f : exp2f((row_m[h] - m_new) * scale_log2);
        m_scaled[h] = m_new == -INFINITY ? 0.f : m_new * scale_log2;
        row_m[h] = m_new;
      }
      float page_sum[2] = {0.f, 0.f};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[4 * j + e] = exp2f(s[4 * j + e] * scale_log2 - m_scaled[e >> 1]);
          page_sum[e >> 1] += s[4 * j + e];
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int chunk = wg * 4 + j;  // 16-byte chunk of the 128-byte P row
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          int r = row0 + 8 * h;
          uint32_t addr = p_smem + swizzle_128b_offset(r, chunk) + quad_col * 2;
          uint32_t packed = Traits::pack(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]);
          asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(packed) : "memory");
        }
      }
      fence_proxy_async_smem();
#pragma unroll
      for (int h = 0; h < 2; ++h) row_l[h] = row_l[h] * rescale[h] + page_sum[h];
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        o[4 * j + 0] *= rescale[0];
        o[4 * j + 1] *= rescale[0];
        o[4 * j + 2] *= rescale[1];
        o[4 * j + 3] *= rescale[1];
      }
      named_barrier_sync(2, kConsumerThreads);

      wgmma_fence();
      {
        // V is read MN-major: 8-token groups of 128-byte rows 1024 bytes apart (stride offset), and
        // the next 64 output columns in the next swizzle tile of the page (leading offset).
        const uint64_t v_desc = smem_desc_sw128(kv_stage + wg * 4 * kChunkBytes, kChunkBytes, 1024);
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          Traits::mma_pv(o, p_desc + ((kk * 32) >> 4), v_desc + ((kk * 16 * 128) >> 4));
      }
      wgmma_commit();
      // Free the stage as soon as its last reader is done: the producer can then load page n + 2
      // while page n + 1 is computed, so a whole page of work hides each load (with two stages,
      // releasing only after the next page's QK^T left the load latency exposed).
      wgmma_wait<0>();
      fence_accumulators(o);
      if (lane == 0) mbarrier_arrive(bars.kv_empty(stage));
    }

    // Epilogue: merge the two warpgroups' row sums, normalise, write.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_l[h] += __shfl_xor_sync(0xffffffff, row_l[h], 1);
      row_l[h] += __shfl_xor_sync(0xffffffff, row_l[h], 2);
    }
    if (lane % 4 == 0) {
      row_sum_smem[wg * kTileRows + row0] = row_l[0];
      row_sum_smem[wg * kTileRows + row0 + 8] = row_l[1];
    }
    named_barrier_sync(1, kConsumerThreads);

    float total[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) total[h] = row_sum_smem[row0 + 8 * h] + row_sum_smem[kTileRows + row0 + 8 * h];
    store_tile<Elem>(p, w, slot, m_block, wg, row0, o, row_m, total, scale_log2);
  }
}

template <typename Elem>
__global__ void __launch_bounds__(kThreads, 1)
    mla_decode_split_kernel(const __grid_constant__ MlaDecodeParams params, const __grid_constant__ CUtensorMap q_map,
                      const __grid_constant__ CUtensorMap kv_map) {
  griddep_launch_dependents();  // the combine kernel may take SMs as CTAs exit (mla_decode_kernel.cu)
  extern __shared__ uint8_t smem_raw[];
  const AlignedSmem aligned = align_swizzle_atoms(smem_raw);
  const uint32_t smem_base = aligned.addr;
  uint8_t* smem = aligned.ptr;
  SplitBarriers bars(smem_base + SplitLayout::barriers);

  const int m_block = blockIdx.x;
  const int part = blockIdx.y;
  PartWalker walker(params.sched_metadata + part * kMetadataWidth, params.cache_seqlens);

  run_producer_and_consumers(
      [&] {
        mbarrier_init(bars.q_full, 1);
        mbarrier_init(bars.q_empty, kConsumerThreads / 32);
        for (int s = 0; s < kNumStages; ++s) {
          for (int c = 0; c < kNumChunks; ++c) mbarrier_init(bars.kv_full(s, c), 1);
          mbarrier_init(bars.kv_empty(s), kConsumerThreads / 32);
        }
      },
      [&] {
        prefetch_tensor_map(&q_map);
        prefetch_tensor_map(&kv_map);
        split_producer_loop(params, &q_map, &kv_map, walker, bars, smem_base + SplitLayout::q,
                            smem_base + SplitLayout::kv, m_block);
      },
      [&] { split_consumer_loop<Elem>(params, walker, bars, smem, smem_base, m_block); });
}
}  // namespace decode_detail
}  // namespace hf_flashmla
