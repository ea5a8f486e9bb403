// A CPU stand-in for the few CUDA runtime and device features csrc/mla_metadata_kernel.cu uses, so that
// the kernel's own source runs on the host: cudaLaunchKernel starts one OS thread per CUDA thread of the
// (single) block, __syncthreads is a block-wide barrier, __shfl_up_sync a per-warp exchange through two
// barriers, __shared__ variables are function statics (one copy shared by the block's threads).
// Test-only (tests/harness/mla_metadata_emulated.cpp); put this folder first on the include path.
#pragma once
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9 };

namespace emulated_cuda {
inline thread_local dim3 thread_index;
inline dim3 block_dim;
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline int64_t warp_slots[32][32];
inline int launches = 0;
}  // namespace emulated_cuda

#define threadIdx (emulated_cuda::thread_index)
#define blockDim (emulated_cuda::block_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

inline void __syncthreads() { emulated_cuda::block_barrier->arrive_and_wait(); }

template <class T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta) {
  static_assert(std::is_integral_v<T> && sizeof(T) <= sizeof(int64_t), "emulated shuffle of integers only");
  using namespace emulated_cuda;
  if (mask != 0xffffffffu) std::abort();  // the kernel shuffles whole warps only
  const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  warp_slots[warp][lane] = static_cast<int64_t>(value);
  warp_barriers[warp]->arrive_and_wait();
  const T result = lane >= delta ? static_cast<T>(warp_slots[warp][lane - delta]) : value;
  warp_barriers[warp]->arrive_and_wait();  // nobody overwrites a slot before every lane has read
  return result;
}

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "emulated launch: invalid configuration"; }

template <class Arg>
cudaError_t cudaLaunchKernel(void (*kernel)(Arg), dim3 grid, dim3 block, void** args, size_t shared_bytes,
                             cudaStream_t) {
  using namespace emulated_cuda;
  if (grid.x != 1 || grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1 || block.x < 1 ||
      block.x > 1024 || block.x % 32 != 0 || shared_bytes != 0)
    return cudaErrorInvalidConfiguration;  // what the kernel under test may be launched with
  using Param = std::remove_cv_t<std::remove_reference_t<Arg>>;
  const Param param = *static_cast<const Param*>(args[0]);
  block_dim = block;
  block_barrier = std::make_unique<std::barrier<>>(block.x);
  warp_barriers.clear();
  for (unsigned w = 0; w < block.x / 32; ++w) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
  std::vector<std::thread> threads;
  threads.reserve(block.x);
  for (unsigned t = 0; t < block.x; ++t)
    threads.emplace_back([=] {
      thread_index = dim3(t);
      kernel(param);
    });
  for (auto& thread : threads) thread.join();
  ++launches;
  return cudaSuccess;
}
