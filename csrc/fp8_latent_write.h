// Host-side contract between the torch binding (mla_api.cpp) and the FP8 cache's write kernel
// (fp8_latent_write.cu). No torch headers: the .cu builds with plain nvcc.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace hf_flashmla {

struct Fp8LatentWriteParams {
  uint8_t* pool;          // [num_rows, 656] contiguous: the FP8 cache's token rows
  const int64_t* slots;   // [n]: the pool row each latent row goes to (rows outside [0, num_rows) are skipped)
  const void* latent;     // [n, 576] contiguous: 512 latent + 64 rope values, in latent_dtype
  int64_t num_rows, n;
  int latent_dtype;       // 0 bf16, 1 fp16, 2 fp32
};

// Quantizes each latent row into FlashMLA's FP8 layout (hf_flashmla/fp8_latent.py) and stores it in its slot, one
// kernel on `stream` (no host sync: it runs inside captured decode steps). Byte for byte what fp8_latent.quantize
// gives. Returns a message on failure (static storage), nullptr on success.
const char* fp8_latent_write_launch(const Fp8LatentWriteParams& params, cudaStream_t stream);

}  // namespace hf_flashmla
