// Split-KV MLA decode for Hopper (sm_90a): tensor maps, launch, and the combine kernels that merge the partial
// results of split sequences. The decode kernel itself is mla_decode_seesaw.cuh.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cudaTypedefs.h>

#include <mutex>
#include <type_traits>

#include "mla_decode_fp8_narrow.cuh"
#include "mla_decode_seesaw.cuh"
#include "mla_split_merge.cuh"

namespace hf_flashmla {
namespace decode_detail {

// Merges the partial results of split sequences (mla_split_merge.cuh); writes empty sequences (no split) as
// out = 0, lse = +inf (NaN where the length changed since the schedule: length_changed). Two kernels:
//  - mla_combine_rows_kernel, one warp per row, rows_per_warp rows each, so the grid stays near kCombineMaxBlocks:
//    every block costs its launch even when it exits at once (one block per row cost ~20 us at b = 128,
//    s_q * h_q = 256, and 160 us at b = 1024); rows of sequences split at most kFewSplits ways take
//    merge_row_few_splits (one L2 round trip per row);
//  - mla_combine_shared_row_kernel where sequences are split many ways (parts >= 8 * batch) and rows are few
//    (batch * s_q * h_q <= kCombineMaxBlocks): one block per row, its 16 warps taking every 16th split and adding
//    up through shared memory, so a row split over ~100 parts is a few L2 round trips per warp (b = 4 with a 45K
//    context: 14 us with 4 warps and the two-pass lse, 8.3 us like this, 19 us with a block per quarter row). At
//    2-3 splits per sequence a block per row was ~1% slower.
// Both are launched as programmatic dependents of the decode kernel (launch_combine) and read the split counts and
// lengths before waiting for its grid (SequenceSplits): sequences with one split exit at once (the decode kernel
// wrote them), so those blocks cost nothing on the critical path, and after the wait a row is one L2 round trip.
constexpr int kCombineWarps = 4;
constexpr int kSharedRowWarps = 16;
constexpr int kCombineMaxBlocks = 4096;

template <typename Elem>
__global__ void __launch_bounds__(kCombineWarps * 32) mla_combine_rows_kernel(const MlaDecodeParams p, int rows_per_warp) {
  const int batch = blockIdx.y;
  const SequenceSplits splits = sequence_splits(p, batch);
  if (splits.count == 1) return;  // the decode kernel wrote it
  const bool nan_rows = empty_but_length_changed(p, splits, batch);
  griddep_wait();
  const int rows_total = p.s_q * p.h_q;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int i = 0; i < rows_per_warp; ++i) {
    const int grow = (blockIdx.x * rows_per_warp + i) * kCombineWarps + warp;
    if (grow >= rows_total) break;
    if (nan_rows) write_nan_row<Elem>(p, batch, grow, lane);
    else if (splits.count <= kFewSplits) merge_row_few_splits<Elem>(p, splits, batch, grow, lane);
    else merge_row<Elem>(p, splits, batch, grow, lane);
  }
}

// kPreload: rows of at most 32 splits load every split's lse (one per lane) and the warp's two partial rows at
// once, one L2 round trip after the decode grid instead of three. It takes 75 registers, one block per SM, so the
// launcher picks it only where the grid is one wave anyway (b * s_q * h_q <= SMs): there it is 0.6-3.5 us faster
// (b1 L16K h16 27.8 -> 24.3 us, b1 L1K h128 16.4 -> 14.7, b1 L1K h16 13.3 -> 12.5), while on larger grids, where two
// blocks per SM (64 registers) matter more, it cost 0.7-1.6 us (b4 L2K h64, b8 L4K h128, b1 L4K s2 h128).
template <typename Elem, bool kPreload>
__global__ void __launch_bounds__(kSharedRowWarps * 32) mla_combine_shared_row_kernel(const MlaDecodeParams p) {
  __shared__ float4 shared_acc[kSharedRowWarps][kHeadDimV / 4];
  const int batch = blockIdx.y, grow = blockIdx.x;
  const SequenceSplits splits = sequence_splits(p, batch);
  if (splits.count == 1 || grow >= p.s_q * p.h_q) return;
  const bool nan_row = empty_but_length_changed(p, splits, batch);
  griddep_wait();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (nan_row) {
    if (warp == 0) write_nan_row<Elem>(p, batch, grow, lane);
    return;
  }
  const SplitRow r = split_row(p, splits, grow);
  float lse_value;
  float4 acc[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) acc[c] = make_float4(0.f, 0.f, 0.f, 0.f);
  constexpr int kPerWarp = 32 / kSharedRowWarps;
  if (kPreload && r.num_splits <= kPerWarp * kSharedRowWarps) {
    const float my_lse = lane < r.num_splits ? r.lse_of(lane) : -INFINITY;
    float4 part[kPerWarp][4];
#pragma unroll
    for (int j = 0; j < kPerWarp; ++j) {
      const int k = warp + kSharedRowWarps * j;
      if (k >= r.num_splits) break;
      const int64_t row = static_cast<int64_t>(r.split_base + k) * r.rows_total + r.grow;
#pragma unroll
      for (int c = 0; c < 4; ++c) part[j][c] = load_partial(p, row, lane, c);
    }
    lse_value = merged_lse_of_lanes(my_lse);
    const float my_weight = __expf(my_lse - lse_value);  // 0 for splits without keys and rows without any
#pragma unroll
    for (int j = 0; j < kPerWarp; ++j) {
      const int k = warp + kSharedRowWarps * j;
      if (k >= r.num_splits) break;
      const float weight = __shfl_sync(0xffffffff, my_weight, k);
#pragma unroll
      for (int c = 0; c < 4; ++c) add_weighted(acc[c], weight, part[j][c]);
    }
  } else {
    lse_value = merged_lse(r, lane);
    accumulate_splits(acc, p, r, lse_value, warp, kSharedRowWarps, lane);
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) shared_acc[warp][lane + 32 * c] = acc[c];
  __syncthreads();
  if (threadIdx.x >= kHeadDimV / 4) return;
  // Thread t sums columns 4t .. 4t + 3 over the warps.
  float4 total = shared_acc[0][threadIdx.x];
#pragma unroll
  for (int w = 1; w < kSharedRowWarps; ++w) {
    const float4 v = shared_acc[w][threadIdx.x];
    total.x += v.x;
    total.y += v.y;
    total.z += v.z;
    total.w += v.w;
  }
  *reinterpret_cast<uint2*>(out_row_of<Elem>(p, batch, grow) + 4 * threadIdx.x) =
      make_uint2(ElemTraits<Elem>::pack(total.x, total.y), ElemTraits<Elem>::pack(total.z, total.w));
  if (threadIdx.x == 0) store_merged_lse(p, batch, grow, lse_value);
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 encoder = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult status;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &status) ==
            cudaSuccess &&
        status == cudaDriverEntryPointSuccess)
      encoder = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  });
  return encoder;
}

// A box of 64 columns x 64 rows (x 1 x box_depth in a rank-4 map) of 128-byte-swizzled elements over `rank`
// dims (innermost first).
bool encode_tile_map(CUtensorMap* map, const void* base, bool is_bf16, int rank, const cuuint64_t* dims,
                     const cuuint64_t* byte_strides, cuuint32_t box_depth = 1) {
  auto encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  cuuint32_t box[4] = {static_cast<cuuint32_t>(kChunkCols), static_cast<cuuint32_t>(kTileRows), 1, 1};
  box[rank - 1] = box_depth;
  cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  CUresult res = encode(map, is_bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, rank,
                        const_cast<void*>(base), dims, byte_strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return res == CUDA_SUCCESS;
}

// The FP8 cache's latent bytes as {128 columns, 64 tokens of a page, pages, 4 groups of 128 columns}, 128B-swizzled:
// one 128 x 64 x 1 x 4 box is a page's 512 latent bytes of its 64 tokens, group after group (mla_decode_fp8_feed.cuh).
bool encode_fp8_latent_map(CUtensorMap* map, const void* base, int num_blocks) {
  auto encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  const cuuint64_t dims[4] = {kFp8GroupCols, kPageSize, static_cast<cuuint64_t>(num_blocks), kFp8Groups};
  const cuuint64_t strides[3] = {kFp8TokenBytes, kFp8PageBytes, kFp8GroupCols};
  const cuuint32_t box[4] = {kFp8GroupCols, kTileRows, 1, kFp8Groups};
  const cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  CUresult res = encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 4, const_cast<void*>(base), dims, strides, box,
                        elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return res == CUDA_SUCCESS;
}

// The FP8 cache's scales as {4 float32, 64 tokens of a page, pages}: one 4 x 64 box is a page's 1 KB of scales
// (mla_decode_fp8_narrow.cuh); rows before token 0 and pages outside the pool read as zeros.
bool encode_fp8_scale_map(CUtensorMap* map, const void* base, int num_blocks) {
  auto encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  const cuuint64_t dims[3] = {kFp8Groups, kPageSize, static_cast<cuuint64_t>(num_blocks)};
  const cuuint64_t strides[2] = {kFp8TokenBytes, kFp8PageBytes};
  const cuuint32_t box[3] = {kFp8Groups, kTileRows, 1};
  const cuuint32_t elem_strides[3] = {1, 1, 1};
  CUresult res = encode(map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 3,
                        const_cast<uint8_t*>(static_cast<const uint8_t*>(base) + kFp8ScaleOffset), dims, strides, box,
                        elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return res == CUDA_SUCCESS;
}

// The FP8 cache's rope values ({64 bf16 columns, 64 tokens, pages}, 128B-swizzled) and latent bytes
// (encode_fp8_latent_map) as tensor maps; negative token coordinates read as zeros, as in the bf16 maps.
const char* encode_fp8_maps(const MlaDecodeParams& p, CUtensorMap* rope_map, CUtensorMap* latent_map) {
  const cuuint64_t rope_dims[3] = {kChunkCols, kPageSize, static_cast<cuuint64_t>(p.num_blocks)};
  const cuuint64_t rope_strides[2] = {kFp8TokenBytes, kFp8PageBytes};
  if (!encode_tile_map(rope_map, static_cast<const uint8_t*>(p.k_cache) + kFp8RopeOffset, true, 3, rope_dims,
                       rope_strides))
    return "cuTensorMapEncodeTiled failed for k_cache (FP8 layout, rope values)";
  if (!encode_fp8_latent_map(latent_map, p.k_cache, p.num_blocks))
    return "cuTensorMapEncodeTiled failed for k_cache (FP8 layout, latent bytes)";
  return nullptr;
}

// The shared-memory opt-in belongs to a kernel in each device's context, so it is set once per kernel and device:
// under device_map one process launches on several GPUs (mla_api.cpp's guard made q's device current).
template <auto kKernel>
const char* opt_in_shared_memory(int bytes) {
  constexpr int kMaxDevices = 64;
  static bool done[kMaxDevices] = {};
  static std::mutex mutex;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices)
    return "mla_decode: cannot tell the current CUDA device (or its index is >= 64)";
  std::lock_guard<std::mutex> lock(mutex);
  if (!done[device]) {
    if (cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) != cudaSuccess)
      return cudaGetErrorString(cudaGetLastError());
    done[device] = true;
  }
  return nullptr;
}

// How many pairs ahead the producer prefetches pages into L2. bf16: one where two m-block CTAs share each page
// (s_q * h_q in 65..128, e.g. h_q = 128 at s_q = 1), none elsewhere. Measured on the H100: with one CTA per page
// (h_q * s_q <= 64, HBM-bound) prefetching was 6-9% slower (the prefetched pages compete for L2 with the loads), with
// four (s2 h128, compute-bound) no change, with two all 24 configs of the main table 2.9-7.8% faster. The FP8 feed:
// two pairs ahead where several CTAs share each page (its raw loads go out only as the consumers free a stage, and
// from L2 they land sooner: 1-3% faster than none at 128 and 256 rows, one or three pairs the same), none with one
// CTA per page (b64 / b128 L4K h_q 64: 8-9% faster than two pairs, as with bf16).
int prefetch_pairs_for(int num_m_blocks, bool is_fp8) {
  if (is_fp8) return num_m_blocks == 1 ? 0 : 2;
  return num_m_blocks == 2 ? 1 : 0;
}

// The current device's SM count, read once per device (a launch must not query device attributes every call).
int num_sms_of_current_device() {
  constexpr int kMaxDevices = 64;
  static int sms[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return 132;
  if (sms[device] == 0) {
    int count = 0;
    sms[device] = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) == cudaSuccess ? count : 132;
  }
  return sms[device];
}

template <typename Elem>
const char* launch_combine(const MlaDecodeParams& p, int rows_total, cudaStream_t stream) {
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  cudaError_t error;
  if (p.num_parts >= 8 * p.batch && static_cast<int64_t>(p.batch) * rows_total <= kCombineMaxBlocks) {
    config.gridDim = dim3(rows_total, p.batch);
    config.blockDim = dim3(kSharedRowWarps * 32);
    if (static_cast<int64_t>(p.batch) * rows_total <= num_sms_of_current_device())
      error = cudaLaunchKernelEx(&config, mla_combine_shared_row_kernel<Elem, true>, p);
    else
      error = cudaLaunchKernelEx(&config, mla_combine_shared_row_kernel<Elem, false>, p);
  } else {
    auto blocks_per_sequence = [&](int rows_per_warp) {
      const int rows_per_block = kCombineWarps * rows_per_warp;
      return (rows_total + rows_per_block - 1) / rows_per_block;
    };
    int rows_per_warp = 1;
    while (rows_per_warp < 64 &&
           static_cast<int64_t>(p.batch) * blocks_per_sequence(rows_per_warp) > kCombineMaxBlocks)
      rows_per_warp *= 2;
    config.gridDim = dim3(blocks_per_sequence(rows_per_warp), p.batch);
    config.blockDim = dim3(kCombineWarps * 32);
    error = cudaLaunchKernelEx(&config, mla_combine_rows_kernel<Elem>, p, rows_per_warp);
  }
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

// An FP8 cache with s_q * h_q <= 32 query rows: the narrow kernel of shape S (mla_decode_fp8_narrow.cuh), then the
// combine.
template <class S>
const char* launch_fp8_narrow(const MlaDecodeParams& p, cudaStream_t stream) {
  CUtensorMap latent_map, rope_map, scale_map;
  if (const char* error = encode_fp8_maps(p, &rope_map, &latent_map)) return error;
  if (!encode_fp8_scale_map(&scale_map, p.k_cache, p.num_blocks))
    return "cuTensorMapEncodeTiled failed for k_cache (FP8 layout, scales)";
  if (const char* error = opt_in_shared_memory<fp8_narrow::mla_decode_fp8_narrow_kernel<S>>(S::kSmemBytes))
    return error;
  fp8_narrow::mla_decode_fp8_narrow_kernel<S><<<p.num_parts, S::kThreads, S::kSmemBytes, stream>>>(
      p, latent_map, rope_map, scale_map);
  if (cudaPeekAtLastError() != cudaSuccess) return cudaGetErrorString(cudaGetLastError());
  return launch_combine<__nv_bfloat16>(p, p.s_q * p.h_q, stream);
}

template <typename Elem, bool kFp8>
const char* launch_typed(const MlaDecodeParams& params, cudaStream_t stream) {
  MlaDecodeParams p = params;
  p.prefetch_pairs = prefetch_pairs_for(p.num_m_blocks, kFp8);
  const int rows_total = p.s_q * p.h_q;
  CUtensorMap q_map, kv_map, kv4_map;
  // Q tile rows past s_q * h_q fall outside the map: TMA fills them with zeros.
  const cuuint64_t q_dims[3] = {kHeadDim, static_cast<cuuint64_t>(rows_total), static_cast<cuuint64_t>(p.batch)};
  const cuuint64_t q_strides[2] = {kHeadDim * 2, static_cast<cuuint64_t>(rows_total) * kHeadDim * 2};
  if (!encode_tile_map(&q_map, p.q, p.is_bf16, 3, q_dims, q_strides)) return "cuTensorMapEncodeTiled failed for q";
  // The cache as {64 columns, 64 tokens of a page, pages, 9 chunks of 64 columns}: a 64 x 64 x 1 x n box is n
  // adjacent chunks of one page, landing chunk after chunk (kv_map: one chunk, kv4_map: the four of a V half).
  // The tokens of a page are a dimension of their own so that a box may start at a negative token: the last page
  // of a sequence is loaded shifted (page_tail_shift), and the rows before token 0 fall outside the tensor, where
  // TMA writes zeros instead of reading the previous page. Pages outside the pool read as zeros too.
  if constexpr (kFp8) {
    // kv_map: the rope values, kv4_map: the latent bytes.
    if (const char* error = encode_fp8_maps(p, &kv_map, &kv4_map)) return error;
  } else {
    const cuuint64_t kv_dims[4] = {kChunkCols, kPageSize, static_cast<cuuint64_t>(p.num_blocks), kNumChunks};
    const cuuint64_t kv_strides[3] = {kHeadDim * 2, static_cast<cuuint64_t>(kPageSize) * kHeadDim * 2,
                                      kChunkCols * 2};
    if (!encode_tile_map(&kv_map, p.k_cache, p.is_bf16, 4, kv_dims, kv_strides, 1))
      return "cuTensorMapEncodeTiled failed for k_cache";
    if (!encode_tile_map(&kv4_map, p.k_cache, p.is_bf16, 4, kv_dims, kv_strides, kBoxChunks))
      return "cuTensorMapEncodeTiled failed for k_cache (4-chunk view)";
  }

  if (const char* error = opt_in_shared_memory<mla_decode_seesaw_kernel<Elem, kFp8>>(kSeesawSmemBytes)) return error;
  dim3 grid(p.num_m_blocks, p.num_parts);
  mla_decode_seesaw_kernel<Elem, kFp8><<<grid, kThreads, kSeesawSmemBytes, stream>>>(p, q_map, kv_map, kv4_map);
  if (cudaPeekAtLastError() != cudaSuccess) return cudaGetErrorString(cudaGetLastError());
  return launch_combine<Elem>(p, rows_total, stream);
}

}  // namespace decode_detail

const char* mla_decode_launch(const MlaDecodeParams& params, cudaStream_t stream) {
  if (params.is_fp8) {
    if (!params.is_bf16) return "mla_decode: an FP8 cache takes bf16 queries";
    const int rows = params.s_q * params.h_q;
    if (rows <= decode_detail::fp8_narrow::NarrowShape16::kRows)
      return decode_detail::launch_fp8_narrow<decode_detail::fp8_narrow::NarrowShape16>(params, stream);
    if (rows <= decode_detail::fp8_narrow::NarrowShape32::kRows)
      return decode_detail::launch_fp8_narrow<decode_detail::fp8_narrow::NarrowShape32>(params, stream);
    return decode_detail::launch_typed<__nv_bfloat16, true>(params, stream);
  }
  return params.is_bf16 ? decode_detail::launch_typed<__nv_bfloat16, false>(params, stream)
                        : decode_detail::launch_typed<__half, false>(params, stream);
}

}  // namespace hf_flashmla
