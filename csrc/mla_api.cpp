// torch.library registration of the compiled ops. mla_decode checks its inputs' structure here (mla_checks.h: the
// messages hf_flashmla/validation.py gives, each prefixed with the Python exception that hf_flashmla/_ops.py raises
// for it), so that the Python hot path does not, and so that a direct torch.ops call can never launch the kernel on
// memory it would misread.
#include <Python.h>

#include <limits>
#include <optional>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/torch.h>

#include "fp8_latent_write.h"
#include "mla_checks.h"
#include "mla_decode.h"
#include "mla_metadata.h"

namespace hf_flashmla {
namespace {

std::tuple<at::Tensor, at::Tensor> mla_decode(const at::Tensor& q, const at::Tensor& k_cache,
                                              const at::Tensor& block_table, const at::Tensor& cache_seqlens,
                                              const at::Tensor& tile_scheduler_metadata,
                                              const at::Tensor& num_splits, double softmax_scale, bool causal,
                                              int64_t head_dim_v, const std::optional<at::Tensor>& schedule_seqlens,
                                              bool is_fp8_kvcache) {
  MLA_CHECK_VALUE(q.is_cuda(), "q: expected a CUDA tensor (the sm_90 kernel), got one on ", q.device());
  checks::check_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, is_fp8_kvcache);
  const int64_t batch = q.size(0), s_q = q.size(1), h_q = q.size(2);
  checks::check_schedule_tensors(tile_scheduler_metadata, num_splits, batch, q.device(), schedule_seqlens);
  const auto dtype = q.scalar_type();
  const int64_t rows_total = s_q * h_q;
  const int64_t num_m_blocks = (rows_total + kTileRows - 1) / kTileRows;
  const int64_t num_parts = tile_scheduler_metadata.size(0);

  c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({batch, s_q, h_q, kHeadDimV}, q.options());
  auto lse = at::empty({batch, h_q, s_q}, q.options().dtype(at::kFloat));
  if (batch == 0 || rows_total == 0) return {out, lse};
  // Each part boundary adds at most one split to the sequences it cuts.
  const int64_t max_splits = batch + num_parts;
  auto o_accum = at::empty({max_splits, rows_total, kHeadDimV}, q.options().dtype(at::kFloat));
  auto lse_accum = at::empty({max_splits, rows_total}, q.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();

  MlaDecodeParams p{};
  p.q = q.data_ptr();
  p.k_cache = k_cache.data_ptr();
  p.block_table = block_table.data_ptr<int>();
  // With the lengths the schedule was computed for (newest API), the kernel keeps to them and makes the sequences
  // whose length changed since NaN; without, the schedule belongs to cache_seqlens by the caller's word.
  p.seqlens = schedule_seqlens.has_value() ? schedule_seqlens->data_ptr<int>() : cache_seqlens.data_ptr<int>();
  p.current_seqlens = schedule_seqlens.has_value() ? cache_seqlens.data_ptr<int>() : nullptr;
  p.sched_metadata = tile_scheduler_metadata.data_ptr<int>();
  p.num_splits = num_splits.data_ptr<int>();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.o_accum = o_accum.data_ptr<float>();
  p.lse_accum = lse_accum.data_ptr<float>();
  p.batch = static_cast<int>(batch);
  p.s_q = static_cast<int>(s_q);
  p.h_q = static_cast<int>(h_q);
  p.num_blocks = static_cast<int>(k_cache.size(0));
  p.block_table_stride = static_cast<int>(block_table.stride(0));
  p.max_blocks_per_seq = static_cast<int>(block_table.size(1));
  p.num_parts = static_cast<int>(num_parts);
  p.num_m_blocks = static_cast<int>(num_m_blocks);
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.causal = causal;
  p.is_bf16 = dtype == at::kBFloat16;
  p.is_fp8 = is_fp8_kvcache;
  const char* error = mla_decode_launch(p, stream);
  if (error != nullptr) checks::fail(__func__, __FILE__, __LINE__, "hf_flashmla decode launch failed: ", error);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> mla_metadata(const at::Tensor& cache_seqlens, int64_t num_sm_parts,
                                                int64_t page_size, int64_t sequence_overhead_pages,
                                                int64_t split_combine_pages, int64_t min_piece_pages) {
  MLA_CHECK_VALUE(cache_seqlens.is_cuda(), "cache_seqlens: expected a CUDA tensor, got one on ",
                    cache_seqlens.device());
  MLA_CHECK_TYPE(cache_seqlens.scalar_type() == at::kInt, "cache_seqlens: expected dtype int32, got ",
                   checks::dtype_name(cache_seqlens.scalar_type()));
  MLA_CHECK_VALUE(cache_seqlens.dim() == 1 && cache_seqlens.size(0) >= 1,
                    "cache_seqlens: expected shape [batch >= 1], got ", checks::shape_of(cache_seqlens));
  MLA_CHECK_VALUE(cache_seqlens.size(0) < std::numeric_limits<int>::max() - 1024,
                    "cache_seqlens: expected a batch below 2^31 - 1024, got ", cache_seqlens.size(0));
  MLA_CHECK_VALUE(num_sm_parts >= 1 && num_sm_parts <= std::numeric_limits<int>::max() - 1,
                    "num_sm_parts: expected >= 1, got ", num_sm_parts);
  MLA_CHECK_VALUE(page_size >= 1 && page_size <= std::numeric_limits<int>::max(), "page_size: expected >= 1, got ",
                    page_size);
  MLA_CHECK_VALUE(sequence_overhead_pages >= 1 && sequence_overhead_pages <= std::numeric_limits<int>::max(),
                    "sequence_overhead_pages: expected >= 1, got ", sequence_overhead_pages);
  MLA_CHECK_VALUE(min_piece_pages >= 0 && min_piece_pages <= std::numeric_limits<int>::max(),
                    "min_piece_pages: expected >= 0, got ", min_piece_pages);
  const int64_t batch = cache_seqlens.size(0);
  c10::cuda::CUDAGuard guard(cache_seqlens.device());
  auto metadata = at::empty({num_sm_parts, kMetadataWidth}, cache_seqlens.options());
  auto num_splits = at::empty({batch + 1}, cache_seqlens.options());
  MlaMetadataParams p{};
  p.cache_seqlens = cache_seqlens.data_ptr<int>();
  p.seqlens_stride = cache_seqlens.stride(0);
  p.tile_scheduler_metadata = metadata.data_ptr<int>();
  p.num_splits = num_splits.data_ptr<int>();
  p.batch = static_cast<int>(batch);
  p.num_parts = static_cast<int>(num_sm_parts);
  p.page_size = static_cast<int>(page_size);
  p.sequence_overhead_pages = static_cast<int>(sequence_overhead_pages);
  p.split_combine_pages = split_combine_pages;
  p.min_piece_pages = static_cast<int>(min_piece_pages);
  const char* error = mla_metadata_launch(p, c10::cuda::getCurrentCUDAStream().stream());
  if (error != nullptr) checks::fail(__func__, __FILE__, __LINE__, "hf_flashmla metadata launch failed: ", error);
  return {metadata, num_splits};
}

// Quantizes latent rows [n, 576] into the FP8 pool rows [num_rows, 656] at `slots` (fp8_latent_write.cu).
void fp8_latent_write(at::Tensor pool, const at::Tensor& slots, const at::Tensor& latent) {
  MLA_CHECK_VALUE(pool.is_cuda() && pool.scalar_type() == at::kByte && pool.dim() == 2 && pool.size(1) == 656 &&
                      pool.is_contiguous(),
                  "pool: expected a contiguous CUDA uint8 tensor [num_rows, 656] (FP8 layout rows), got ",
                  checks::dtype_name(pool.scalar_type()), " ", checks::shape_of(pool), " on ", pool.device());
  MLA_CHECK_VALUE(latent.device() == pool.device() && latent.dim() == 2 && latent.size(1) == 576 &&
                      latent.is_contiguous(),
                  "latent: expected a contiguous [n, 576] tensor on ", pool.device(), ", got ",
                  checks::shape_of(latent), " on ", latent.device());
  const auto dtype = latent.scalar_type();
  MLA_CHECK_VALUE(dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kFloat,
                  "latent: expected bfloat16, float16 or float32, got ", checks::dtype_name(dtype));
  MLA_CHECK_VALUE(slots.device() == pool.device() && slots.scalar_type() == at::kLong && slots.dim() == 1 &&
                      slots.size(0) == latent.size(0) && slots.is_contiguous(),
                  "slots: expected a contiguous int64 tensor [", latent.size(0), "] on ", pool.device(), ", got ",
                  checks::dtype_name(slots.scalar_type()), " ", checks::shape_of(slots), " on ",
                  slots.device());
  c10::cuda::CUDAGuard guard(pool.device());
  Fp8LatentWriteParams p{};
  p.pool = pool.data_ptr<uint8_t>();
  p.slots = slots.data_ptr<int64_t>();
  p.latent = latent.data_ptr();
  p.num_rows = pool.size(0);
  p.n = latent.size(0);
  p.latent_dtype = dtype == at::kBFloat16 ? 0 : dtype == at::kHalf ? 1 : 2;
  const char* error = fp8_latent_write_launch(p, c10::cuda::getCurrentCUDAStream().stream());
  if (error != nullptr) checks::fail(__func__, __FILE__, __LINE__, "hf_flashmla fp8_latent_write launch failed: ", error);
}

}  // namespace

TORCH_LIBRARY(hf_flashmla, m) {
  m.def(
      "mla_decode(Tensor q, Tensor k_cache, Tensor block_table, Tensor cache_seqlens, "
      "Tensor tile_scheduler_metadata, Tensor num_splits, float softmax_scale, bool causal, int head_dim_v, "
      "Tensor? schedule_seqlens=None, bool is_fp8_kvcache=False) -> (Tensor, Tensor)");
  m.def(
      "mla_metadata(Tensor cache_seqlens, int num_sm_parts, int page_size, int sequence_overhead_pages, "
      "int split_combine_pages, int min_piece_pages) "
      "-> (Tensor, Tensor)");
  m.def("fp8_latent_write(Tensor(a!) pool, Tensor slots, Tensor latent) -> ()");
}

TORCH_LIBRARY_IMPL(hf_flashmla, CUDA, m) {
  m.impl("mla_decode", &mla_decode);
  m.impl("mla_metadata", &mla_metadata);
  m.impl("fp8_latent_write", &fp8_latent_write);
}

}  // namespace hf_flashmla

// A module init so that `import hf_flashmla._C` loads the library (the ops register on load).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "hf_flashmla compiled ops", -1, nullptr};
  return PyModule_Create(&module);
}
