// csrc/mla_metadata_kernel.cu itself (kernel and launcher) built for the host against the emulated runtime
// in emulated_cuda/, every CUDA thread an OS thread. Used by tests/test_schedule_kernel_host.py.
// Outputs start as a sentinel, so a word no thread writes shows up.
//
// stdin:  number of cases, then per case: stride num_parts page_size overhead combine_pages min_piece_pages
//         batch
//         len_0 .. len_{b-1}
//         (the lengths are laid out `stride` ints apart, junk in between)
// stdout: per case one line: the num_parts * 8 metadata values, then the batch + 1 num_splits values;
//         or "error <message>" when the launcher refuses.
#include <cstdio>
#include <vector>

#include "mla_metadata_kernel.cu"

int main() {
  int num_cases = 0;
  if (std::scanf("%d", &num_cases) != 1) return 2;
  for (int c = 0; c < num_cases; ++c) {
    int stride, num_parts, page_size, overhead, min_piece_pages, batch;
    long long combine_pages;
    if (std::scanf("%d %d %d %d %lld %d %d", &stride, &num_parts, &page_size, &overhead, &combine_pages,
                   &min_piece_pages, &batch) != 7)
      return 2;
    std::vector<int> lengths(static_cast<size_t>(batch) * (stride > 0 ? stride : 1), -777);
    for (int i = 0; i < batch; ++i)
      if (std::scanf("%d", &lengths[static_cast<size_t>(i) * stride]) != 1) return 2;
    std::vector<int> metadata(static_cast<size_t>(num_parts) * 8, -12345), num_splits(batch + 1, -12345);
    hf_flashmla::MlaMetadataParams p{};
    p.cache_seqlens = lengths.data();
    p.seqlens_stride = stride;
    p.tile_scheduler_metadata = metadata.data();
    p.num_splits = num_splits.data();
    p.batch = batch;
    p.num_parts = num_parts;
    p.page_size = page_size;
    p.sequence_overhead_pages = overhead;
    p.split_combine_pages = combine_pages;
    p.min_piece_pages = min_piece_pages;
    if (const char* error = hf_flashmla::mla_metadata_launch(p, nullptr)) {
      std::printf("error %s\n", error);
      continue;
    }
    for (int v : metadata) std::printf("%d ", v);
    for (int v : num_splits) std::printf("%d ", v);
    std::printf("\n");
  }
  return 0;
}
