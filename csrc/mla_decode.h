// Host-side contract between the torch binding (mla_api.cpp) and the CUDA kernels. No torch headers,
// no device code: the .cu files include this and build with plain nvcc (CI compiles them for sm_90a).
#pragma once
#include <cuda_runtime.h>

namespace hf_flashmla {

constexpr int kHeadDim = 576;    // 512 latent + 64 rope
constexpr int kHeadDimV = 512;   // V is the first 512 values of each cached token
constexpr int kPageSize = 64;
constexpr int kTileRows = 64;    // query rows (s_q * h_q folded) per CTA
constexpr int kMetadataWidth = 8;

struct MlaDecodeParams {
  const void* q;               // [b, s_q, h_q, 576], contiguous
  const void* k_cache;         // [num_blocks, 64, 1, 576] in q's dtype, or with is_fp8 [num_blocks, 64, 1, 656] bytes
                               // (FlashMLA's FP8 layout, hf_flashmla/fp8_latent.py; q bf16); contiguous
  const int* block_table;      // [b, block_table_stride]
  const int* seqlens;          // [b] the lengths the schedule was computed for: the walk and the masks use them
  const int* current_seqlens;  // [b] or nullptr: the caller's cache_seqlens where `seqlens` is a copy taken with the
                               // schedule (newest API); a sequence whose length differs gets NaN out and lse
  const int* sched_metadata;   // [num_parts, 8]
  const int* num_splits;       // [b + 1], exclusive prefix of splits per sequence
  void* out;                   // [b, s_q, h_q, 512], q's dtype
  float* lse;                  // [b, h_q, s_q]
  float* o_accum;              // [max_splits, s_q * h_q, 512] partial outputs (normalised rows), fp32
  float* lse_accum;            // [max_splits, s_q * h_q] partial lse (natural log)
  int batch, s_q, h_q, num_blocks, block_table_stride, max_blocks_per_seq;
  int num_parts, num_m_blocks;
  int prefetch_pairs;          // the producer prefetches pages this many pairs ahead into L2 (0: none; set by the launch)
  float softmax_scale;
  bool causal;
  bool is_bf16;
  bool is_fp8;                 // k_cache in the FP8 layout (mla_decode_fp8_feed.cuh)
};

// Launches the split-KV decode kernel and the combine kernel on `stream`.
// Returns a message on failure (static storage), nullptr on success.
const char* mla_decode_launch(const MlaDecodeParams& params, cudaStream_t stream);

}  // namespace hf_flashmla
