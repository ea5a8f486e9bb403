// Host-side contract between the torch binding (mla_api.cpp) and the split-KV schedule kernel
// (mla_metadata_kernel.cu). No torch headers: the .cu builds with plain nvcc.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace hf_flashmla {

struct MlaMetadataParams {
  const int* cache_seqlens;      // [batch], element stride seqlens_stride
  int64_t seqlens_stride;
  int* tile_scheduler_metadata;  // [num_parts, 8], contiguous
  int* num_splits;               // [batch + 1]
  int batch;                     // >= 1
  int num_parts;                 // >= 1
  int page_size;                 // >= 1 (tokens per page)
  int sequence_overhead_pages;   // >= 1 (fixed cost of a sequence in the balancing)
  int64_t split_combine_pages;   // cost of splitting a sequence, in pages (any value; very negative: never whole)
  int min_piece_pages;           // >= 0: pieces of fewer pages halve k (mla_metadata_core.h; 0: never)
};

// Computes hf_flashmla/schedule.py's schedule (bit for bit) with one single-CTA kernel on `stream`:
// no host sync, no allocation, so it can be captured in a CUDA graph.
// Returns a message on failure (static storage), nullptr on success.
const char* mla_metadata_launch(const MlaMetadataParams& params, cudaStream_t stream);

}  // namespace hf_flashmla
