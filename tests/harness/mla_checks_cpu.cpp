// A CPU build of csrc/mla_checks.h for tests/test_csrc_checks.py: the structural checks the CUDA op runs, registered
// as a torch.library op for every backend, so that their errors reach Python through the dispatcher exactly as
// they do from hf_flashmla::mla_decode.
#include <optional>

#include "mla_checks.h"

namespace {

void check_inputs(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& block_table,
                  const at::Tensor& cache_seqlens, const at::Tensor& tile_scheduler_metadata,
                  const at::Tensor& num_splits, double softmax_scale, int64_t head_dim_v,
                  const std::optional<at::Tensor>& schedule_seqlens, bool is_fp8_kvcache) {
  hf_flashmla::checks::check_decode_inputs(q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale,
                                           is_fp8_kvcache);
  hf_flashmla::checks::check_schedule_tensors(tile_scheduler_metadata, num_splits, q.size(0), q.device(),
                                              schedule_seqlens);
}

}  // namespace

TORCH_LIBRARY(hf_flashmla_checks, m) {
  m.def(
      "check_inputs(Tensor q, Tensor k_cache, Tensor block_table, Tensor cache_seqlens, "
      "Tensor tile_scheduler_metadata, Tensor num_splits, float softmax_scale, int head_dim_v, "
      "Tensor? schedule_seqlens=None, bool is_fp8_kvcache=False) -> ()");
}

TORCH_LIBRARY_IMPL(hf_flashmla_checks, CompositeExplicitAutograd, m) { m.impl("check_inputs", &check_inputs); }
