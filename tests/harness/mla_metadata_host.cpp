// Host mirror of csrc/mla_metadata_kernel.cu: the same per-thread code (csrc/mla_metadata_core.h) with the
// block scans done serially, chunk by chunk as the kernel walks the batch, for any thread count. Used by
// tests/test_schedule_kernel_host.py to compare the kernel's arithmetic with hf_flashmla/schedule.py
// without a GPU. Every word of the outputs starts as a sentinel, so a word no thread writes shows up.
//
// stdin:  number of cases, then per case: num_threads num_parts page_size overhead combine_pages min_piece_pages
//         batch
//         len_0 .. len_{b-1}
//         (num_threads 0: as many as the kernel's launcher picks)
// stdout: per case one line: the num_parts * 8 metadata values, then the batch + 1 num_splits values.
#include <cstdint>
#include <cstdio>
#include <vector>

#include "mla_metadata_core.h"

namespace core = hf_flashmla::schedule_core;

namespace {

constexpr int kSentinel = -12345;

// The kernel's chunk loop with the block scan done serially: cost_end of every sequence of the chunk.
int64_t scan_chunk(const std::vector<int>& lengths, int base, int num_threads, int page_size, int overhead,
                   int64_t carry, std::vector<int64_t>& ends, std::vector<int64_t>& pages, std::vector<int64_t>& costs) {
  const int batch = static_cast<int>(lengths.size());
  int64_t running = 0;
  for (int tid = 0; tid < num_threads; ++tid) {
    const int i = base + tid;
    const bool valid = i < batch;
    pages[tid] = valid ? core::sequence_pages(lengths[i], page_size) : 0;
    costs[tid] = valid ? pages[tid] + overhead : 0;
    running += costs[tid];
    ends[tid] = carry + running;
  }
  return running;
}

void run_case(int num_threads, int num_parts, int page_size, int overhead, int64_t combine_pages,
              int min_piece_pages, const std::vector<int>& lengths, std::vector<int>& metadata,
              std::vector<int>& num_splits) {
  const int batch = static_cast<int>(lengths.size());
  metadata.assign(static_cast<size_t>(num_parts) * core::kRowWidth, kSentinel);
  num_splits.assign(batch + 1, kSentinel);

  int64_t total = 0, max_cost = 0;  // pass 1, per thread as the kernel strides
  for (int tid = 0; tid < num_threads; ++tid)
    for (int i = tid; i < batch; i += num_threads) {
      const int64_t cost = core::sequence_pages(lengths[i], page_size) + overhead;
      total += cost;
      max_cost = core::max64(max_cost, cost);
    }
  core::Shape shape = core::make_shape(total, max_cost, batch, num_parts, overhead, combine_pages,
                                       min_piece_pages);
  std::vector<int64_t> ends(num_threads), pages(num_threads), costs(num_threads);
  std::vector<int64_t> snapped(core::kMaxSnappedParts + 1, -1), by_count(core::kMaxSnappedParts + 1, -1);

  if (core::snapping_considered(shape)) {
    int64_t carry = 0;
    for (int base = 0; base < batch; base += num_threads) {
      const int64_t chunk_cost = scan_chunk(lengths, base, num_threads, page_size, overhead, carry, ends, pages, costs);
      const int count = batch - base < num_threads ? batch - base : num_threads;
      const core::Chunk chunk{ends.data(), carry, base, count, base + num_threads >= batch};
      for (int tid = 0; tid < num_threads; ++tid)
        core::snap_chunk_bounds(snapped.data(), by_count.data(), chunk, shape, tid, num_threads);
      carry += chunk_cost;
    }
    int64_t largest_nearest = 0, largest_by_count = 0;
    for (int part = 0; part < num_parts; ++part) {
      largest_nearest = core::max64(largest_nearest, snapped[part + 1] - snapped[part]);
      largest_by_count = core::max64(largest_by_count, by_count[part + 1] - by_count[part]);
    }
    int64_t largest = largest_nearest;
    if (core::by_count_preferred(largest_by_count, largest_nearest)) {
      largest = largest_by_count;
      snapped = by_count;
    }
    if (core::whole_fits(largest, shape)) shape.mode = core::Mode::kSnapped;
  }

  num_splits[0] = 0;
  int64_t carry_cost = 0, carry_splits = 0;
  for (int base = 0; base < batch; base += num_threads) {
    const int64_t chunk_cost = scan_chunk(lengths, base, num_threads, page_size, overhead, carry_cost, ends, pages,
                                          costs);
    int64_t running_splits = 0;
    for (int tid = 0; tid < num_threads; ++tid) {
      const int i = base + tid;
      const bool valid = i < batch;
      const int64_t splits = valid ? core::sequence_splits(pages[tid], ends[tid] - costs[tid], ends[tid], shape) : 0;
      running_splits += splits;
      if (valid) num_splits[i + 1] = static_cast<int>(carry_splits + running_splits);
    }
    const int count = batch - base < num_threads ? batch - base : num_threads;
    const core::Chunk chunk{ends.data(), carry_cost, base, count, base + num_threads >= batch};
    for (int tid = 0; tid < num_threads; ++tid)
      core::place_chunk_bounds(metadata.data(), chunk, shape, snapped.data(), tid, num_threads);
    carry_cost += chunk_cost;
    carry_splits += running_splits;
  }
}

}  // namespace

int main() {
  int num_cases = 0;
  if (std::scanf("%d", &num_cases) != 1) return 2;
  std::vector<int> lengths, metadata, num_splits;
  for (int c = 0; c < num_cases; ++c) {
    int num_threads, num_parts, page_size, overhead, min_piece_pages, batch;
    long long combine_pages;
    if (std::scanf("%d %d %d %d %lld %d %d", &num_threads, &num_parts, &page_size, &overhead, &combine_pages,
                   &min_piece_pages, &batch) != 7)
      return 2;
    if (num_threads == 0) num_threads = core::launch_threads(batch, num_parts);
    lengths.resize(batch);
    for (int& length : lengths)
      if (std::scanf("%d", &length) != 1) return 2;
    run_case(num_threads, num_parts, page_size, overhead, combine_pages, min_piece_pages, lengths, metadata,
             num_splits);
    for (int v : metadata) std::printf("%d ", v);
    for (int v : num_splits) std::printf("%d ", v);
    std::printf("\n");
  }
  return 0;
}
