// The split-KV tile schedule (hf_flashmla/schedule.py, bit for bit) as one single-CTA kernel, so that
// get_mla_metadata costs one launch per decode step instead of ~46 PyTorch ops (0.5-0.9 ms on an H100).
//
// Two or three passes over the batch, T sequences per step (T = blockDim.x, one sequence per thread):
//   1. sum and maximum of the costs -> total, payload and whether each sequence gets its own part (every
//      later quantity needs them);
//   (only where b > num_parts) per chunk: block scan of the costs, then each balanced bound snapped to the
//      nearer end of its sequence and the by-count candidate's bounds (shared memory); the smaller largest part
//      of the two picks the snapped bounds and decides between the snapped and the balanced mode
//      (mla_metadata_core.h);
//   2. per chunk of T sequences: block scan of the costs (cost_end C_i), each sequence's split count, block
//      scan of the split counts (num_splits), then each part bound p is placed by thread p % T, in the
//      chunk whose cost range holds it (binary search of the chunk's C_i in shared memory).
// Bounds are spread over threads rather than owned by sequences so that one long sequence (all parts cut
// it) does not leave a single thread writing every row. The arithmetic lives in mla_metadata_core.h,
// shared with a host harness that the CPU tests compare against schedule.py.
#include <cuda_runtime.h>

#include <cstdint>

#include "mla_decode.h"
#include "mla_metadata.h"
#include "mla_metadata_core.h"

namespace hf_flashmla {
namespace {

namespace core = schedule_core;
static_assert(core::kRowWidth == kMetadataWidth, "schedule row width");

constexpr int kMaxThreads = core::kMaxThreads;
constexpr int kMaxWarps = kMaxThreads / 32;

// The scans' combining operations; 0 is the identity of both on the non-negative values scanned here.
struct Sum {
  __device__ __forceinline__ int64_t operator()(int64_t a, int64_t b) const { return a + b; }
};
struct Max {
  __device__ __forceinline__ int64_t operator()(int64_t a, int64_t b) const { return core::max64(a, b); }
};

template <class Op>
__device__ __forceinline__ int64_t warp_inclusive_scan(int64_t value, int lane, Op op) {
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int64_t other = __shfl_up_sync(0xffffffffu, value, offset);
    if (lane >= offset) value = op(value, other);
  }
  return value;
}

// Inclusive scan of one value per thread over the block; block_total gets the whole block's result. One
// barrier: the warp totals are read after it, so a caller must not hand the same `warp_totals` to the next
// call (a thread may still be reading them); the kernel rotates buffers, and every call between two uses of
// one buffer has a barrier that all of its readers pass first.
template <class Op = Sum>
__device__ __forceinline__ int64_t block_inclusive_scan(int64_t value, int64_t* warp_totals, int64_t& block_total,
                                                        Op op = Op()) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, num_warps = blockDim.x >> 5;
  value = warp_inclusive_scan(value, lane, op);
  if (lane == 31) warp_totals[warp] = value;
  __syncthreads();
  int64_t before = 0, total = 0;
  for (int w = 0; w < num_warps; ++w) {
    const int64_t t = warp_totals[w];
    before = w < warp ? op(before, t) : before;
    total = op(total, t);
  }
  block_total = total;
  return op(before, value);
}

__global__ void __launch_bounds__(kMaxThreads) mla_metadata_kernel(const MlaMetadataParams p) {
  __shared__ int64_t chunk_ends[kMaxThreads];  // cost_end of the chunk's sequences
  __shared__ int64_t cost_totals[kMaxWarps];   // warp totals: cost scans
  __shared__ int64_t other_totals[kMaxWarps];  // warp totals: the pass-1 sum, then the split scans
  __shared__ int64_t max_totals[kMaxWarps];    // warp totals: the pass-1 maximum, then the largest snapped part
  __shared__ int64_t snapped[core::kMaxSnappedParts + 1];  // snapped mode: the part bounds in cost space
  __shared__ int64_t by_count[core::kMaxSnappedParts + 1];  // its by-count candidate (mla_metadata_core.h)
  const int tid = threadIdx.x, num_threads = blockDim.x;
  const int batch = p.batch, overhead = p.sequence_overhead_pages;
  auto length_at = [&](int i) { return p.cache_seqlens[static_cast<int64_t>(i) * p.seqlens_stride]; };

  int64_t my_cost = 0, my_max_cost = 0;
  for (int i = tid; i < batch; i += num_threads) {
    const int64_t cost = core::sequence_pages(length_at(i), p.page_size) + overhead;
    my_cost += cost;
    my_max_cost = core::max64(my_max_cost, cost);
  }
  int64_t total, max_cost;
  block_inclusive_scan(my_cost, other_totals, total);
  block_inclusive_scan(my_max_cost, max_totals, max_cost, Max());
  core::Shape shape = core::make_shape(total, max_cost, batch, p.num_parts, overhead, p.split_combine_pages,
                                       p.min_piece_pages);

  if (core::snapping_considered(shape)) {
    int64_t carry = 0;
    for (int base = 0; base < batch; base += num_threads) {
      const int i = base + tid;
      const int64_t cost = i < batch ? core::sequence_pages(length_at(i), p.page_size) + overhead : 0;
      int64_t chunk_cost;
      // Its barrier also orders this chunk's chunk_ends writes after every read of the previous chunk's.
      chunk_ends[tid] = carry + block_inclusive_scan(cost, cost_totals, chunk_cost);
      __syncthreads();
      const int count = batch - base < num_threads ? batch - base : num_threads;
      const core::Chunk chunk{chunk_ends, carry, base, count, base + num_threads >= batch};
      core::snap_chunk_bounds(snapped, by_count, chunk, shape, tid, num_threads);
      carry += chunk_cost;
    }
    __syncthreads();
    int64_t my_nearest = 0, my_by_count = 0, largest_nearest, largest_by_count;
    for (int part = tid; part < shape.num_parts; part += num_threads) {
      my_nearest = core::max64(my_nearest, snapped[part + 1] - snapped[part]);
      my_by_count = core::max64(my_by_count, by_count[part + 1] - by_count[part]);
    }
    block_inclusive_scan(my_nearest, max_totals, largest_nearest, Max());
    // A different warp-totals buffer: threads may still read max_totals (block_inclusive_scan's note).
    block_inclusive_scan(my_by_count, other_totals, largest_by_count, Max());
    int64_t largest = largest_nearest;
    if (core::by_count_preferred(largest_by_count, largest_nearest)) {
      largest = largest_by_count;
      for (int part = tid; part <= shape.num_parts; part += num_threads) snapped[part] = by_count[part];
      __syncthreads();
    }
    if (core::whole_fits(largest, shape)) shape.mode = core::Mode::kSnapped;
  }

  if (tid == 0) p.num_splits[0] = 0;
  int64_t carry_cost = 0, carry_splits = 0;
  int next_length = tid < batch ? length_at(tid) : 0;
  for (int base = 0; base < batch; base += num_threads) {
    const int i = base + tid;
    const bool valid = i < batch;
    const int length = next_length;
    if (valid && i + num_threads < batch) next_length = length_at(i + num_threads);

    const int64_t pages = valid ? core::sequence_pages(length, p.page_size) : 0;
    const int64_t cost = valid ? pages + overhead : 0;
    int64_t chunk_cost;
    const int64_t cost_end = carry_cost + block_inclusive_scan(cost, cost_totals, chunk_cost);
    chunk_ends[tid] = cost_end;  // readers of the previous chunk's values passed the barrier above

    const int64_t splits = valid ? core::sequence_splits(pages, cost_end - cost, cost_end, shape) : 0;
    int64_t chunk_splits;
    // This scan's barrier also publishes chunk_ends.
    const int64_t splits_through = carry_splits + block_inclusive_scan(splits, other_totals, chunk_splits);
    if (valid) p.num_splits[i + 1] = static_cast<int>(splits_through);

    const int count = batch - base < num_threads ? batch - base : num_threads;
    const core::Chunk chunk{chunk_ends, carry_cost, base, count, base + num_threads >= batch};
    core::place_chunk_bounds(p.tile_scheduler_metadata, chunk, shape, snapped, tid, num_threads);
    carry_cost += chunk_cost;
    carry_splits += chunk_splits;
  }
}

}  // namespace

const char* mla_metadata_launch(const MlaMetadataParams& p, cudaStream_t stream) {
  if (p.batch < 1 || p.num_parts < 1 || p.page_size < 1 || p.sequence_overhead_pages < 1 || p.seqlens_stride < 0)
    return "mla_metadata: batch, num_parts, page_size and sequence_overhead_pages must be >= 1";
  if (p.min_piece_pages < 0) return "mla_metadata: min_piece_pages must be >= 0";
  // cudaLaunchKernel rather than <<<>>> so that the CPU tests can build this file with a host compiler and
  // an emulated runtime (tests/harness/emulated_cuda) that runs the kernel's threads for real.
  MlaMetadataParams params = p;
  void* args[] = {&params};
  const dim3 grid(1), block(core::launch_threads(p.batch, p.num_parts));
  const cudaError_t error = cudaLaunchKernel(mla_metadata_kernel, grid, block, args, 0, stream);
  if (error == cudaSuccess) return nullptr;
  cudaGetLastError();  // clear it: the caller raises, later CUDA calls must not see it again
  return cudaGetErrorString(error);
}

}  // namespace hf_flashmla
