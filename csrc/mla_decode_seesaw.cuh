// The decode kernel ("seesaw"): the two consumer warpgroups alternate pages (FlashMLA's published schedule,
// written here from its description; docs/kernel-design.md has the measurements).
//
// One CTA = one 64-row query tile x one part of the tile schedule; 384 threads: warpgroups 0 and 1
// compute, warpgroup 2's first thread issues TMA. Pages go in pairs (A, B): A lands in stage 0 and
// belongs to warpgroup 0, B in stage 1 and belongs to warpgroup 1. Each warpgroup holds half of the
// 64 x 512 fp32 output (WG0 columns 0..255 = O_L, WG1 256..511 = O_R). Per pair:
//   WG0: S_A = Q K_A^T (m64n64k16, one pass over Q per page) -> m_A, P_A = exp(S_A - m_A)
//        [publishes m_A and P_A]            O_L = O_L s_A + P_A V_A,L   (P_A from registers)
//        [waits m_B, P_B]                   O_L = O_L s_B + P_B V_B,L   (P_B from smem)
//        and, issued right behind it, the next pair's S_A (so WG0 enters a pair with S_A done: the tensor pipe
//        does not drain at the pair's end, as FlashMLA's schedule keeps it fed there)
//   WG1: S_B = Q K_B^T ; [waits m_A, P_A]   O_R = O_R s_A + P_A V_A,R   (P_A from smem; runs during
//        WG1's own softmax:) m_B, P_B = exp(S_B - m_B) [publishes m_B, P_B]
//                                           O_R = O_R s_B + P_B V_B,R   (P_B from registers)
// with s_A = exp(m_prev - m_A), s_B = exp(m_A - m_B) (m lazy: it moves only past a 2^8 margin, so s is 1 and the
// O rescale skipped on nearly every page; seesaw_lazy_max): exactly online softmax, reordered so that one
// warpgroup's exp/max runs while the other's wgmma keeps the tensor cores busy, and Q is read from
// shared memory once per page (a split of every page between the warpgroups reads it once per warpgroup).
// FlashMLA's published order adds P_A s_B V_A,R last instead; measured equal here, this one has one hand-over
// less and frees page A's stage by mid-pair.
//
// Shared memory: Q (72 KB) + two page stages (2 x 72 KB) + P_A (8 KB) fill the 227 KB; P_B goes into
// page B's rope chunk, dead once S_B is computed. Each stage is freed in two column groups, so the next
// pair's loads start as soon as part of a page is consumed:
//   group 0 = chunks {4..7} (V's right half), freed by WG1 after its P V_R,
//   group 1 = chunks {0..3} and 8 (V's left half and the rope chunk; P_B in stage 1), freed by WG0 after P V_L.
// Stage 0's group 1 is read by WG0 alone (Q K^T and P_A V_A,L) and is freed mid-pair, so it is loaded first and the
// next A's Q K^T starts on it (0..3, 8, then 4..7) while the pair is still running. Stage 1 keeps group 0 first
// (4..7, 0..3, 8): group 1 first there too measured 3.5-11% slower on compute-bound configs.
// A group is one TMA box per run of adjacent chunks (the chunks are a dimension of the cache's tensor maps: {4..7},
// {0..3}, {8}): issuing the nine 8 KB boxes one by one cost the producer ~60 cycles each, on the path from a freed
// stage to its next page.
// Q K^T walks the chunks in load order (seesaw_chunk); the sum is order-free.
// A sequence range with an odd page count ends on a pair without B: WG1 then only adds P_A V_A,R.
// Hand-overs between the warpgroups are named barriers that both warpgroups bar.sync: kBarPA where WG0 has issued
// its P_A V_A,L (WG1 gets there when S_B is done, usually later), kBarPB where WG1 has published m_B and P_B (WG0
// waits there for them). Each side gets there about when it would have arrived or waited anyway: measured against
// bar.arrive -> bar.sync at the same points, the compute-bound configs ran 0.5-0.9% faster. The order it gives is
// one compute-sanitizer's racecheck models: with a bar.arrive anywhere in the kernel, racecheck reported the m slots
// and even the epilogue's row-sum exchange behind its bar.sync of both warpgroups; with none it reports nothing.
// So each m slot is rewritten only after a barrier that the reader passed after its read (m_A: the pair's kBarPB,
// or the epilogue's; m_B: the next pair's kBarPA). P_A and P_B are read by wgmma (the async proxy): a warpgroup
// rewrites them only after its next Q K^T, which waits for a page the producer loads only after the other
// warpgroup freed its stage group (mbarrier arrive = release, producer wait = acquire, TMA completion observed by
// the writer), and the other warpgroup's P V reading them completed before it freed that group.
#pragma once
#include "mla_decode_common.cuh"
#include "mla_decode_fp8_feed.cuh"

namespace hf_flashmla {
namespace decode_detail {

struct SeesawLayout {
  static constexpr int q = 0;
  static constexpr int kv = q + kTileBytes;
  static constexpr int p_a = kv + kNumStages * kTileBytes;       // P_A, 64 x 64, 128B-swizzled
  static constexpr int row_max = p_a + kChunkBytes;             // float [2][64]: m published by WG w
  static constexpr int row_sum = row_max + 2 * kTileRows * 4;   // float [2 items][2 wg][64]
  static constexpr int barriers = row_sum + 4 * kTileRows * 4;
  // q_full, q_empty, kv_full[2][9], kv_empty[2 stages][2 groups], raw_full[2] (FP8 feed only)
  static constexpr int total = barriers + 8 * (2 + kNumStages * kNumChunks + kNumStages * 2 + kNumStages);
};
constexpr int kSeesawSmemBytes = SeesawLayout::total + 1024;  // + alignment slack for the swizzle atoms
static_assert(kSeesawSmemBytes <= 232448, "seesaw layout exceeds the 227 KB of opt-in shared memory");

// Named barriers (0 is __syncthreads), each synced by both consumer warpgroups: the per-pair hand-overs WG0 -> WG1
// and back, and the epilogue's sum exchange.
constexpr uint32_t kBarRowSum = 1;
constexpr uint32_t kBarPA = 2;     // WG0 published m_A and P_A (and issued its P_A V_A,L)
constexpr uint32_t kBarPB = 3;     // WG1 published m_B and P_B

// Chunk i (0..8) of a stage in load and Q K^T order. Stage 1: group 0 = {4..7}, then group 1 = {0..3}, {8}. Stage 0:
// group 1 first ({0..3}, {8}, then {4..7}): warpgroup 0 frees it mid-pair, right after its own P_A V_A,L, so the next
// A's first five chunks land before the pair ends and warpgroup 0 issues their Q K^T behind its P_B V_B,L
// (seesaw_consumer_loop). The FP8 feed (mla_decode_fp8_feed.cuh) publishes chunks 0..3 before 4..7, so its pages are
// walked in plain order.
template <bool kFp8, int kStage>
__host__ __device__ constexpr int seesaw_chunk(int i) {
  return kFp8 ? i : kStage == 0 ? (i < 4 ? i : (i == 4 ? 8 : i - 1)) : (i < 4 ? i + 4 : (i < 8 ? i - 4 : 8));
}
// The TMA boxes of a page start at chunks 4, 0 and 8; each box's first chunk holds its mbarrier.
__host__ __device__ constexpr bool seesaw_box_head(int chunk) { return chunk == 4 || chunk == 0 || chunk == 8; }
// Walk positions of stage 0 (bf16 pages) that warpgroup 0 issues behind the previous pair's last P V: the chunks it
// frees itself, 0..3 and 8.
constexpr int kQkHead = 5;

// Every walk visits each chunk once and reaches each box at its head, so a box's mbarrier wait comes before any of
// its chunks is read; and, for bf16 pages, stage 0's first kQkHead positions are the chunks warpgroup 0 frees.
template <bool kFp8, int kStage>
constexpr bool seesaw_walk_is_valid() {
  int seen = 0;
  for (int i = 0; i < 9; ++i) {
    const int c = seesaw_chunk<kFp8, kStage>(i);
    if (c < 0 || c > 8 || (seen >> c) & 1) return false;
    const int head = c == 8 ? 8 : (c < 4 ? 0 : 4);
    if (!((seen >> head) & 1) && c != head) return false;
    seen |= 1 << c;
    if (!kFp8 && kStage == 0 && i < kQkHead && c >= 4 && c < 8) return false;
  }
  return seen == 0x1ff;
}
static_assert(seesaw_walk_is_valid<false, 0>() && seesaw_walk_is_valid<false, 1>() &&
                  seesaw_walk_is_valid<true, 0>() && seesaw_walk_is_valid<true, 1>(),
              "a Q K^T chunk walk reads a chunk twice, misses one, or reads a box before its head");
constexpr int kBoxChunks = 4;

struct SeesawBarriers {
  uint32_t q_full, q_empty, kv_full_base, kv_empty_base, raw_full_base;
  __device__ explicit SeesawBarriers(uint32_t base)
      : q_full(base), q_empty(base + 8), kv_full_base(base + 16),
        kv_empty_base(base + 16 + 8 * kNumStages * kNumChunks),
        raw_full_base(kv_empty_base + 8 * kNumStages * 2) {}
  __device__ uint32_t kv_full(int stage, int chunk) const { return kv_full_base + 8 * (stage * kNumChunks + chunk); }
  __device__ uint32_t kv_empty(int stage, int group) const { return kv_empty_base + 8 * (stage * 2 + group); }
  // The FP8 feed: a page's raw latent bytes landed (TMA), before the producer warpgroup dequantises them.
  __device__ uint32_t raw_full(int stage) const { return raw_full_base + 8 * stage; }
};

// kv_map: boxes of one chunk; kv4_map: boxes of four adjacent chunks, which land in shared memory chunk after chunk
// (both view the cache as {64 columns, 64 tokens, pages, 9 chunks}: mla_decode_kernel.cu). first_row is minus the
// page's tail shift (page_tail_shift): 0 except on the last page of a sequence.
__device__ __forceinline__ void seesaw_load_box4(const CUtensorMap* kv4_map, const SeesawBarriers& bars, uint32_t dst,
                                                 int stage, int first_chunk, int page, int first_row) {
  mbarrier_arrive_expect_tx(bars.kv_full(stage, first_chunk), kBoxChunks * kChunkBytes);
  tma_load_4d(dst + first_chunk * kChunkBytes, kv4_map, bars.kv_full(stage, first_chunk), 0, first_row, page,
              first_chunk);
}

__device__ __forceinline__ void seesaw_load_group(const CUtensorMap* kv_map, const CUtensorMap* kv4_map,
                                                  const SeesawBarriers& bars, uint32_t kv_smem, int stage,
                                                  int group, int page, int first_row, uint32_t use_count) {
  mbarrier_wait(bars.kv_empty(stage, group), (use_count & 1) ^ 1);
  const uint32_t dst = kv_smem + stage * kTileBytes;
  if (group == 0) {
    seesaw_load_box4(kv4_map, bars, dst, stage, 4, page, first_row);
  } else {
    seesaw_load_box4(kv4_map, bars, dst, stage, 0, page, first_row);
    mbarrier_arrive_expect_tx(bars.kv_full(stage, 8), kChunkBytes);
    tma_load_4d(dst + 8 * kChunkBytes, kv_map, bars.kv_full(stage, 8), 0, first_row, page, 8);
  }
}

// L2 prefetch of the pages p.prefetch_pairs pairs ahead (0: none; mla_decode_kernel.cu picks it). One whole-page
// bulk prefetch (one instruction: pages are contiguous in the cache) per page, the pairs spread over the part's
// m-block CTAs, issued after the pair's own loads so that those are not queued behind it in the TMA unit.
template <int kPageBytes, typename PageOf>
__device__ __forceinline__ void seesaw_prefetch_pair(const MlaDecodeParams& p, const PageOf& page_of, int blk,
                                                     int stop_block, int m_block) {
  if ((blk / 2) % p.num_m_blocks != m_block) return;
  for (int b = blk; b < min(blk + 2, stop_block); ++b) {
    const int page = page_of(b);
    if (page >= 0 && page < p.num_blocks)
      prefetch_bulk_l2(static_cast<const char*>(p.k_cache) + static_cast<int64_t>(page) * kPageBytes, kPageBytes);
  }
}

// The producer's walk over its part: Q per item and every page of every item, in pairs (A in stage 0, B in stage 1).
// A page goes out in two calls, start_page(stage, page, shift, uses) for both pages of the pair, then
// finish_page(...) for both: the bf16 boxes start whole and need no finish; the FP8 feed (mla_decode_fp8_feed.cuh,
// run by all 128 producer threads) starts a page's raw bytes and finishes by dequantizing them, so that the pair's
// second raw load is in flight while the first page converts. Only the issuer (the producer warpgroup's first
// thread) loads Q and prefetches.
template <int kPageBytes, class StartPage, class FinishPage>
__device__ __forceinline__ void seesaw_producer_loop(const MlaDecodeParams& p, const CUtensorMap* q_map,
                                                     const PartWalker& walker, const SeesawBarriers& bars,
                                                     uint32_t q_smem, int m_block, bool issuer, StartPage start_page,
                                                     FinishPage finish_page) {
  uint32_t item_count = 0, uses0 = 0, uses1 = 0;
  auto load_q = [&](int batch) {
    mbarrier_wait(bars.q_empty, (item_count & 1) ^ 1);
    mbarrier_arrive_expect_tx(bars.q_full, kTileBytes);
#pragma unroll
    for (int c = 0; c < kNumChunks; ++c)
      tma_load_3d(q_smem + c * kChunkBytes, q_map, bars.q_full, c * kChunkCols, m_block * kTileRows, batch);
    ++item_count;
  };
  for (int k = 0; k < walker.num_items(); ++k) {
    const int batch = walker.begin_batch + k;
    // The first item's Q goes out before its length is read: at kernel start that dependent load comes from a cold
    // L2 and delayed the first Q K^T by ~1500 clocks. Not for a part that its metadata already shows empty (a
    // schedule's spare parts: 116 of 132 at b = 1, where 72 KB each would be wasted HBM traffic). Should the item
    // still turn out empty, the consumers take this Q phase too (they wait for it and release it).
    // The consumers' release of an empty first item (seesaw_consumer_loop) tests the same condition.
    const bool early_q = k == 0 && !walker.empty_by_metadata();
    if (early_q && issuer) load_q(batch);
    const int* table_row = p.block_table + static_cast<int64_t>(batch) * p.block_table_stride;
    // Never read past the block table's row; an out-of-pool page id makes TMA fill zeros, not fault.
    auto page_of = [&](int blk) { return blk < p.max_blocks_per_seq ? __ldg(table_row + blk) : -1; };
    // The first pair's page ids are read next to the item's length, not after it: one dependent load less before
    // the item's first page goes out (at kernel start both come from a cold L2). Unused if the item is shorter.
    const int first_block = walker.start_block(batch);
    const int first_page_a = page_of(first_block), first_page_b = page_of(first_block + 1);
    WorkItem w = walker.item(batch);
    if (w.stop_block <= w.start_block) continue;
    if (!early_q && issuer) load_q(batch);
    // The pairs that the loop's look-ahead starts past.
    if (issuer)
      for (int blk = w.start_block + 2; blk < w.start_block + 2 * p.prefetch_pairs; blk += 2)
        seesaw_prefetch_pair<kPageBytes>(p, page_of, blk, w.stop_block, m_block);
#pragma unroll 1
    for (int blk = w.start_block; blk < w.stop_block; blk += 2) {
      const bool has_b = blk + 1 < w.stop_block;
      const bool first_pair = blk == first_block;
      const int page_a = first_pair ? first_page_a : page_of(blk);
      const int page_b = has_b ? (first_pair ? first_page_b : page_of(blk + 1)) : -1;
      // In the order the consumers free them during the previous pair.
      const int shift_a = page_tail_shift(blk, w.seqlen), shift_b = page_tail_shift(blk + 1, w.seqlen);
      start_page(0, page_a, shift_a, uses0);
      if (has_b) start_page(1, page_b, shift_b, uses1);
      finish_page(0, page_a, shift_a, uses0);
      if (has_b) finish_page(1, page_b, shift_b, uses1);
      if (issuer && p.prefetch_pairs > 0)
        seesaw_prefetch_pair<kPageBytes>(p, page_of, blk + 2 * p.prefetch_pairs, w.stop_block, m_block);
      ++uses0;
      if (has_b) ++uses1;
    }
  }
}

// Per-thread view of the consumer warpgroups' fragments.
// (The warpgroup index is not here: the consumer takes it warp-uniform from a shuffle, see the kernel.)
struct SeesawThread {
  int warp_in_wg, lane, row0, quad_col;
  __device__ SeesawThread() {
    const int tid = threadIdx.x;
    warp_in_wg = (tid % 128) / 32;
    lane = tid % 32;
    row0 = warp_in_wg * 16 + lane / 4;  // this thread's rows: row0 and row0 + 8
    quad_col = 2 * (lane % 4);
  }
};

// Q's rope chunk (columns 512..575) as the A operand of m64n64k16: k-slice kk in registers 4kk..4kk+3.
// Held for the whole sequence range, it saves 8 KB of shared-memory reads per page in Q K^T, which is bound
// by shared-memory bandwidth (+0.6..1.1% on compute-bound configs; the 16 registers fit next to O).
__device__ __forceinline__ void seesaw_load_q_rope(uint32_t q_smem, const SeesawThread& t, uint32_t (&a)[16]) {
  const uint32_t rope = q_smem + 8 * kChunkBytes;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = t.row0 + 8 * (i & 1), chunk = 2 * kk + (i >> 1);
      const uint32_t addr = rope + swizzle_128b_offset(row, chunk) + t.quad_col * 2;
      asm volatile("ld.shared.b32 %0, [%1];" : "=r"(a[4 * kk + i]) : "r"(addr) : "memory");
    }
}

// Issues the wgmma of S = Q K^T for walk positions [kBegin, kEnd) of a page held in stage kStage, waiting for each box
// as its first chunk comes up; the caller fences, commits and waits (a whole page: seesaw_qk).
template <typename Elem, int kStage, bool kFp8, int kBegin, int kEnd>
__device__ __forceinline__ void seesaw_qk_issue(float (&s)[32], const SeesawBarriers& bars, uint32_t q_smem,
                                                uint32_t kv_stage, uint32_t parity, const uint32_t (&q_rope)[16]) {
  const uint64_t q_desc = smem_desc_sw128(q_smem, 16, 1024);
  const uint64_t k_desc = smem_desc_sw128(kv_stage, 16, 1024);
#pragma unroll
  for (int i = kBegin; i < kEnd; ++i) {
    const int c = seesaw_chunk<kFp8, kStage>(i);
    if (seesaw_box_head(c)) mbarrier_wait(bars.kv_full(kStage, c), parity);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint32_t off = (c * kChunkBytes + kk * 32) >> 4;
      if (c == 8)
        ElemTraits<Elem>::mma_qk_page_regs(s, q_rope + 4 * kk, k_desc + off, (i | kk) != 0);
      else
        ElemTraits<Elem>::mma_qk_page(s, q_desc + off, k_desc + off, (i | kk) != 0);
    }
  }
}

// S = Q K^T over one page held in `stage`, chunk by chunk as they land.
template <typename Elem, int kStage, bool kFp8>
__device__ __forceinline__ void seesaw_qk(float (&s)[32], const SeesawBarriers& bars, uint32_t q_smem,
                                          uint32_t kv_stage, uint32_t parity, const uint32_t (&q_rope)[16]) {
  wgmma_fence();
  seesaw_qk_issue<Elem, kStage, kFp8, 0, kNumChunks>(s, bars, q_smem, kv_stage, parity, q_rope);
  wgmma_commit();
  wgmma_wait<0>();
  fence_accumulators(s);
}

// Keys past the sequence end and, for causal, past each row's last visible key get -inf; so do the zero rows of a
// last page loaded shifted (page_tail_shift): column c holds token token_base - shift + c, and c < shift none.
__device__ __forceinline__ void seesaw_mask(float (&s)[32], const SeesawThread& t, int blk, const int (&key_limit)[2],
                                            int min_limit, int seqlen) {
  const int token_base = blk * kPageSize;
  if (token_base + kPageSize <= min_limit) return;
  const int first_token = token_base - page_tail_shift(blk, seqlen);
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int token = first_token + 8 * j + t.quad_col + (e & 1);
      if (token < token_base || token >= key_limit[e >> 1]) s[4 * j + e] = -INFINITY;
    }
}

__device__ __forceinline__ void seesaw_row_max(const float (&s)[32], float (&page_max)[2]) {
  page_max[0] = page_max[1] = -INFINITY;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) page_max[e >> 1] = fmaxf(page_max[e >> 1], s[4 * j + e]);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    page_max[h] = fmaxf(page_max[h], __shfl_xor_sync(0xffffffff, page_max[h], 1));
    page_max[h] = fmaxf(page_max[h], __shfl_xor_sync(0xffffffff, page_max[h], 2));
  }
}

// P = exp(S - m) in place; returns this thread's partial row sums.
__device__ __forceinline__ void seesaw_exp(float (&s)[32], const float (&m)[2], float scale_log2, float (&sum)[2]) {
  float m_scaled[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) m_scaled[h] = m[h] == -INFINITY ? 0.f : m[h] * scale_log2;
  sum[0] = sum[1] = 0.f;
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[4 * j + e] = exp2f(s[4 * j + e] * scale_log2 - m_scaled[e >> 1]);
      sum[e >> 1] += s[4 * j + e];
    }
}

// P, packed as the P V A operand (seesaw_pack_p), as a 64 x 64 K-major operand in 128B-swizzled shared memory for
// the other warpgroup: registers 2j, 2j + 1 hold rows row0 and row0 + 8 of k-columns 8j + quad_col, + 1.
__device__ __forceinline__ void seesaw_store_p(uint32_t p_smem, const uint32_t (&p)[16], const SeesawThread& t) {
#pragma unroll
  for (int j = 0; j < 8; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint32_t addr = p_smem + swizzle_128b_offset(t.row0 + 8 * h, j) + t.quad_col * 2;
      asm volatile("st.shared.b32 [%0], %1;" ::"r"(addr), "r"(p[2 * j + h]) : "memory");
    }
}

// The accumulator layout of S is the A-operand layout of P V: registers 8kk..8kk+7 are k-slice kk.
template <typename Elem>
__device__ __forceinline__ void seesaw_pack_p(const float (&s)[32], uint32_t (&p)[16]) {
#pragma unroll
  for (int i = 0; i < 16; ++i) p[i] = ElemTraits<Elem>::pack(s[2 * i], s[2 * i + 1]);
}

// The softmax of one page, run by its owner: from the page's row max (m, in place) and the running max m_run, the
// new lazy max (back in m, and published for the other warpgroup in m_slot), the factor from m_run to it, P = exp(S
// - m) packed in p (the owner's P V operand) and stored at p_smem (the other's), and this thread's partial row sums.
template <typename Elem>
__device__ __forceinline__ void seesaw_softmax_publish(float (&s)[32], float (&m)[2], const float (&m_run)[2],
                                                       float scale_log2, const SeesawThread& t, uint32_t p_smem,
                                                       float* m_slot, float (&factor)[2], float (&sum)[2],
                                                       uint32_t (&p)[16]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    m[h] = seesaw_lazy_max(m_run[h], m[h], scale_log2);
    factor[h] = seesaw_rescale(m_run[h], m[h], scale_log2);
  }
  seesaw_exp(s, m, scale_log2, sum);
  seesaw_pack_p<Elem>(s, p);
  seesaw_store_p(p_smem, p, t);
  if (t.lane % 4 == 0) {
    m_slot[t.row0] = m[0];
    m_slot[t.row0 + 8] = m[1];
  }
  fence_proxy_async_smem();
}

__device__ __forceinline__ void seesaw_scale_o(float (&o)[128], const float (&f)[2]) {
  // Warp-uniform through a shuffle (ptxas then knows the branch is uniform: no wgmma serialisation, C7520).
  if (!__shfl_sync(0xffffffff, __any_sync(0xffffffff, f[0] != 1.f || f[1] != 1.f), 0)) return;
#pragma unroll
  for (int j = 0; j < 32; ++j) {
    o[4 * j + 0] *= f[0];
    o[4 * j + 1] *= f[0];
    o[4 * j + 2] *= f[1];
    o[4 * j + 3] *= f[1];
  }
}

// O_half += P V_half with P from registers. half = which 256 output columns (4 chunks of the page).
template <typename Elem>
__device__ __forceinline__ void seesaw_pv_regs(float (&o)[128], const uint32_t (&p)[16], uint32_t kv_stage, int half) {
  const uint64_t v_desc = smem_desc_sw128(kv_stage + half * 4 * kChunkBytes, kChunkBytes, 1024);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) ElemTraits<Elem>::mma_pv_regs(o, p + 4 * kk, v_desc + ((kk * 16 * 128) >> 4));
  wgmma_commit();
}

// The non-owner of a page reads its V half only after the owner's hand-over, which follows the owner's own
// waits on these chunks; waiting on them here too (already complete, so nearly free) makes the TMA data's
// visibility to this warpgroup explicit instead of relying on the transitive order through the named barrier.
__device__ __forceinline__ void seesaw_wait_v_half(const SeesawBarriers& bars, int stage, int half, uint32_t parity) {
  mbarrier_wait(bars.kv_full(stage, 4 * half), parity);  // one box holds the half
}

// O_half += P V_half with P from shared memory.
template <typename Elem>
__device__ __forceinline__ void seesaw_pv_smem(float (&o)[128], uint32_t p_smem, uint32_t kv_stage, int half) {
  const uint64_t p_desc = smem_desc_sw128(p_smem, 16, 1024);
  const uint64_t v_desc = smem_desc_sw128(kv_stage + half * 4 * kChunkBytes, kChunkBytes, 1024);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; ++kk)
    ElemTraits<Elem>::mma_pv(o, p_desc + ((kk * 32) >> 4), v_desc + ((kk * 16 * 128) >> 4));
  wgmma_commit();
}

// One function for both warpgroups (wg is warp-uniform: read through a shuffle by the caller), so that
// their shared code, the epilogue's sum exchange included, is one instruction stream.
template <typename Elem, bool kFp8>
__device__ __forceinline__ void seesaw_consumer_loop(const MlaDecodeParams& p, const PartWalker& walker,
                                                     const SeesawBarriers& bars, uint8_t* smem, uint32_t smem_base,
                                                     int m_block, const int wg) {
  const SeesawThread t;
  const uint32_t q_smem = smem_base + SeesawLayout::q;
  const uint32_t stage0 = smem_base + SeesawLayout::kv;
  const uint32_t stage1 = stage0 + kTileBytes;
  const uint32_t p_a_smem = smem_base + SeesawLayout::p_a;
  const uint32_t p_b_smem = stage1 + 8 * kChunkBytes;  // page B's rope chunk
  float* row_max_smem = reinterpret_cast<float*>(smem + SeesawLayout::row_max);
  float* row_sum_smem = reinterpret_cast<float*>(smem + SeesawLayout::row_sum);
  const int rows_total = p.s_q * p.h_q;
  const float scale_log2 = p.softmax_scale * 1.4426950408889634f;
  // Warpgroup 0 issues the next A's Q K^T at the end of each pair (bf16 pages). The FP8 feed publishes a page only
  // after the pair's end (its conversion follows page B's raw load), so there it would only delay the free of page B.
  constexpr bool kTailQk = !kFp8;

  uint32_t item_count = 0, uses0 = 0, uses1 = 0;
  const int num_items = walker.num_items();
  ItemPlan next_plan;
  if (num_items > 0) next_plan = load_item_plan(p, walker, 0);
  for (int k = 0; k < num_items; ++k) {
    const ItemPlan plan = next_plan;
    if (k + 1 < num_items) next_plan = load_item_plan(p, walker, k + 1);
    const WorkItem& w = plan.w;
    if (w.stop_block <= w.start_block) {
      // The producer's early_q condition (seesaw_producer_loop): it loaded this Q before it knew the item was empty.
      if (k == 0 && !walker.empty_by_metadata()) {
        mbarrier_wait(bars.q_full, item_count & 1);
        if (t.lane == 0) mbarrier_arrive(bars.q_empty);
        ++item_count;
      }
      continue;
    }
    const int seqlen = w.seqlen;
    const OutputSlot& slot = plan.slot;
    int key_limit[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int grow = m_block * kTileRows + t.row0 + 8 * h;
      const int token = min(grow, rows_total - 1) / p.h_q;
      key_limit[h] = p.causal ? seqlen - p.s_q + token + 1 : seqlen;
    }
    const int min_limit = p.causal ? seqlen - p.s_q + 1 : seqlen;
    const int num_pages = w.stop_block - w.start_block;

    float o[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i] = 0.f;
    float row_m[2] = {-INFINITY, -INFINITY};
    float row_l[2] = {0.f, 0.f};  // this thread's partial sums of this warpgroup's pages

    mbarrier_wait(bars.q_full, item_count & 1);
    uint32_t q_rope[16];
    seesaw_load_q_rope(q_smem, t, q_rope);
    // WG1 reads Q only for B pages; with a single page it has none and releases Q at once.
    if (wg == 1 && num_pages < 2) {
      __syncwarp();  // every lane's rope loads are done before lane 0 lets the producer overwrite Q
      if (t.lane == 0) mbarrier_arrive(bars.q_empty);
    }

    // Warpgroup 0 enters each pair with S_A done: the item's first here, every later one at the end of the pair
    // before it (behind that pair's P_B V_B,L).
    float s[32];
    if (kTailQk && wg == 0) {
      seesaw_qk<Elem, 0, kFp8>(s, bars, q_smem, stage0, uses0 & 1, q_rope);
      if (w.start_block + 2 >= w.stop_block && t.lane == 0) mbarrier_arrive(bars.q_empty);
    }

    for (int blk = w.start_block; blk < w.stop_block; blk += 2) {
      const bool has_b = blk + 1 < w.stop_block;
      uint32_t p_regs[16];
      if (wg == 0) {
        if (!kTailQk) {
          seesaw_qk<Elem, 0, kFp8>(s, bars, q_smem, stage0, uses0 & 1, q_rope);
          if (blk + 2 >= w.stop_block && t.lane == 0) mbarrier_arrive(bars.q_empty);
        }
        seesaw_mask(s, t, blk, key_limit, min_limit, seqlen);
        float m_a[2], s_a[2], sum[2];
        seesaw_row_max(s, m_a);
        seesaw_softmax_publish<Elem>(s, m_a, row_m, scale_log2, t, p_a_smem, row_max_smem, s_a, sum, p_regs);
        seesaw_scale_o(o, s_a);
        seesaw_pv_regs<Elem>(o, p_regs, stage0, 0);
        // After the issue, so that the wait for WG1 (it reaches kBarPA once S_B is done) stalls nothing that the
        // tensor cores could run; WG0 only waits for kBarPB after this.
        named_barrier_sync(kBarPA, kConsumerThreads);
        // Page A's chunks 0..3 and 8 are read by this warpgroup alone: freed now, the next A's first chunks land
        // before this pair ends.
        wgmma_wait<0>();
        fence_accumulators(o);
        fence_operands(p_regs);
        if (t.lane == 0) mbarrier_arrive(bars.kv_empty(0, 1));
#pragma unroll
        for (int h = 0; h < 2; ++h) row_l[h] = row_l[h] * s_a[h] + sum[h];
        float s_b[2] = {1.f, 1.f};
        if (has_b) {
          named_barrier_sync(kBarPB, kConsumerThreads);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const float m_b = row_max_smem[kTileRows + t.row0 + 8 * h];
            s_b[h] = seesaw_rescale(m_a[h], m_b, scale_log2);
            row_m[h] = m_b;
            row_l[h] *= s_b[h];
          }
        } else {
          row_m[0] = m_a[0];
          row_m[1] = m_a[1];
        }
        if (has_b) {
          seesaw_scale_o(o, s_b);
          seesaw_wait_v_half(bars, 1, 0, uses1 & 1);
          // Each branch waits for everything it issued: ptxas serialises every wgmma of the kernel (C7515) where a
          // group stays in flight across a branch or the loop's back-edge, or where O is fenced while S is in flight.
          if (kTailQk && blk + 2 < w.stop_block) {
            // The next A's Q K^T goes out behind P_B V_B,L, so the tensor pipe does not drain at the pair's end:
            // first the chunks freed mid-pair (landed by now), then, once P_B V_B,L is done and page B's chunks
            // 0..3 and 8 are freed, the rest.
            seesaw_pv_smem<Elem>(o, p_b_smem, stage1, 0);
            const uint32_t next_parity = (uses0 + 1) & 1;
            seesaw_qk_issue<Elem, 0, kFp8, 0, kQkHead>(s, bars, q_smem, stage0, next_parity, q_rope);
            wgmma_commit();
            wgmma_wait<1>();
            if (t.lane == 0) mbarrier_arrive(bars.kv_empty(1, 1));
            seesaw_qk_issue<Elem, 0, kFp8, kQkHead, kNumChunks>(s, bars, q_smem, stage0, next_parity, q_rope);
            wgmma_commit();
            wgmma_wait<0>();
            fence_accumulators(o);
            fence_accumulators(s);
            if (blk + 4 >= w.stop_block && t.lane == 0) mbarrier_arrive(bars.q_empty);
          } else {
            seesaw_pv_smem<Elem>(o, p_b_smem, stage1, 0);
            wgmma_wait<0>();
            fence_accumulators(o);
            if (t.lane == 0) mbarrier_arrive(bars.kv_empty(1, 1));
          }
        }
      } else {
        if (has_b) {
          seesaw_qk<Elem, 1, kFp8>(s, bars, q_smem, stage1, uses1 & 1, q_rope);
          if (blk + 3 >= w.stop_block && t.lane == 0) mbarrier_arrive(bars.q_empty);  // last B page
          seesaw_mask(s, t, blk + 1, key_limit, min_limit, seqlen);
        }
        // The page's own row max before the hand-over: it needs no m_A, and WG1 often waits here for WG0.
        float m_b[2];
        if (has_b) seesaw_row_max(s, m_b);
        named_barrier_sync(kBarPA, kConsumerThreads);
        float m_a[2], s_a[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          m_a[h] = row_max_smem[t.row0 + 8 * h];
          s_a[h] = seesaw_rescale(row_m[h], m_a[h], scale_log2);
          row_l[h] *= s_a[h];
        }
        seesaw_scale_o(o, s_a);
        seesaw_wait_v_half(bars, 0, 1, uses0 & 1);
        seesaw_pv_smem<Elem>(o, p_a_smem, stage0, 1);  // runs while this warpgroup does its softmax
        if (has_b) {
          float s_b[2], sum[2];
          seesaw_softmax_publish<Elem>(s, m_b, m_a, scale_log2, t, p_b_smem, row_max_smem + kTileRows, s_b, sum,
                                       p_regs);
          named_barrier_sync(kBarPB, kConsumerThreads);  // WG0 is there first: it waits for m_B
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            row_l[h] = row_l[h] * s_b[h] + sum[h];
            row_m[h] = m_b[h];
          }
          wgmma_wait<0>();
          fence_accumulators(o);
          if (t.lane == 0) mbarrier_arrive(bars.kv_empty(0, 0));
          seesaw_scale_o(o, s_b);
          seesaw_pv_regs<Elem>(o, p_regs, stage1, 1);
          wgmma_wait<0>();
          fence_accumulators(o);
          fence_operands(p_regs);
          if (t.lane == 0) mbarrier_arrive(bars.kv_empty(1, 0));
        } else {
          row_m[0] = m_a[0];
          row_m[1] = m_a[1];
          wgmma_wait<0>();
          fence_accumulators(o);
          if (t.lane == 0) mbarrier_arrive(bars.kv_empty(0, 0));
        }
      }

      ++uses0;
      if (has_b) ++uses1;
    }

    // Epilogue: both warpgroups end on the same running max; add their partial sums.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_l[h] += __shfl_xor_sync(0xffffffff, row_l[h], 1);
      row_l[h] += __shfl_xor_sync(0xffffffff, row_l[h], 2);
    }
    // Two slots by item parity: a warpgroup may start the next item's epilogue while the other still reads.
    float* sums = row_sum_smem + (item_count & 1) * 2 * kTileRows;
    if (t.lane % 4 == 0) {
      sums[wg * kTileRows + t.row0] = row_l[0];
      sums[wg * kTileRows + t.row0 + 8] = row_l[1];
    }
    named_barrier_sync(kBarRowSum, kConsumerThreads);
    float total[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) total[h] = sums[t.row0 + 8 * h] + sums[kTileRows + t.row0 + 8 * h];
    store_tile<Elem>(p, w, slot, m_block, wg, t.row0, o, row_m, total, scale_log2, plan.length_changed);
    ++item_count;
  }
}

// kFp8: k_cache holds FlashMLA's FP8 layout (Elem is bf16); kv_map is then the rope view and kv4_map the raw
// latent view of mla_decode_fp8_feed.cuh (mla_decode_kernel.cu encodes them).
template <typename Elem, bool kFp8>
__global__ void __launch_bounds__(kThreads, 1)
    mla_decode_seesaw_kernel(const __grid_constant__ MlaDecodeParams params, const __grid_constant__ CUtensorMap q_map,
                             const __grid_constant__ CUtensorMap kv_map, const __grid_constant__ CUtensorMap kv4_map) {
  griddep_launch_dependents();  // the combine kernel may take SMs as CTAs exit (mla_decode_kernel.cu)
  extern __shared__ uint8_t smem_raw[];
  const AlignedSmem aligned = align_swizzle_atoms(smem_raw);
  const uint32_t smem_base = aligned.addr;
  uint8_t* smem = aligned.ptr;
  SeesawBarriers bars(smem_base + SeesawLayout::barriers);

  const int m_block = blockIdx.x;
  const int part = blockIdx.y;
  PartWalker walker(params.sched_metadata + part * kMetadataWidth, params.seqlens);
  // A spare part of the schedule (its row holds no pages) loads and computes nothing: leaving before the barrier
  // set-up and the item's dependent loads frees its SM for the combine kernel's blocks, launched early (PDL), a
  // few microseconds sooner.
  if (walker.empty_by_metadata()) return;

  run_producer_and_consumers<kFp8>(
      [&] {
        mbarrier_init(bars.q_full, 1);
        mbarrier_init(bars.q_empty, kConsumerThreads / 32);
        for (int s = 0; s < kNumStages; ++s) {
          // The FP8 feed's chunks 0..3 and 4..7 are published by each producer warp (mla_decode_fp8_feed.cuh).
          for (int c = 0; c < kNumChunks; ++c)
            mbarrier_init(bars.kv_full(s, c), kFp8 && c % 4 == 0 && c < 8 ? kProducerThreads / 32 : 1);
          for (int g = 0; g < 2; ++g) mbarrier_init(bars.kv_empty(s, g), 4);  // the 4 warps of one warpgroup
          if constexpr (kFp8) mbarrier_init(bars.raw_full(s), 1);
        }
      },
      [&] {
        const uint32_t q_smem = smem_base + SeesawLayout::q, kv_smem = smem_base + SeesawLayout::kv;
        if constexpr (kFp8) {
          const Fp8FeedThread t;
          if (t.issuer) {
            prefetch_tensor_map(&q_map);
            prefetch_tensor_map(&kv_map);
            prefetch_tensor_map(&kv4_map);
          }
          seesaw_producer_loop<kFp8PageBytes>(
              params, &q_map, walker, bars, q_smem, m_block, t.issuer,
              [&](int stage, int page, int shift, uint32_t uses) {
                if (t.issuer) fp8_start_page(&kv4_map, bars, kv_smem, stage, page, shift, uses);
              },
              [&](int stage, int page, int shift, uint32_t uses) {
                fp8_finish_page(params, &kv_map, bars, t, kv_smem, stage, page, shift, uses);
              });
        } else {
          prefetch_tensor_map(&q_map);
          prefetch_tensor_map(&kv_map);
          prefetch_tensor_map(&kv4_map);
          seesaw_producer_loop<kTileBytes>(
              params, &q_map, walker, bars, q_smem, m_block, true,
              [&](int stage, int page, int shift, uint32_t uses) {
                // In the order the consumers free the groups: stage 0's group 1 mid-pair (warpgroup 0, after its
                // P_A V_A,L), then its group 0 (warpgroup 1, after P_A V_A,R); stage 1's group 0 and group 1 at the
                // pair's end.
                const int first_group = stage == 0 ? 1 : 0;
                seesaw_load_group(&kv_map, &kv4_map, bars, kv_smem, stage, first_group, page, -shift, uses);
                seesaw_load_group(&kv_map, &kv4_map, bars, kv_smem, stage, 1 - first_group, page, -shift, uses);
              },
              [](int, int, int, uint32_t) {});
        }
      },
      [&] {
        // Read through a shuffle so that ptxas sees the warpgroup index as warp-uniform: wgmma inside a branch
        // it cannot prove uniform gets serialised (C7520).
        const int wg = __shfl_sync(0xffffffff, static_cast<int>(threadIdx.x) / 128, 0);
        seesaw_consumer_loop<Elem, kFp8>(params, walker, bars, smem, smem_base, m_block, wg);
      });
}

}  // namespace decode_detail
}  // namespace hf_flashmla
