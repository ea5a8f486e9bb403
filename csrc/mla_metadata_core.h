// Per-thread arithmetic of the split-KV schedule kernel (csrc/mla_metadata_kernel.cu), kept free of CUDA
// headers so that a host harness (tests/harness/mla_metadata_host.cpp, built with the system C++ compiler)
// runs the very same code and the CPU tests compare it with hf_flashmla/schedule.py. The kernel adds
// only what the host cannot share: loads, block-wide scans, barriers.
//
// Cost model and balancing rule (schedule.py's, integer for integer):
//   pages_i = ceil(max(len_i, 0) / page_size), cost_i = pages_i + overhead,
//   C_i = cost_0 + .. + cost_i (cost_end), S_i = C_i - cost_i (cost_begin), total = C_{b-1},
//   payload = ceil(total / num_parts), x_p = min(p * payload, total) for p = 0..num_parts (balanced bounds),
//   seq(x) = min(#{i : C_i <= x}, b - 1)       (torch.searchsorted(C, x, right=True))
//   block(x) = clamp(x - S_seq(x) - overhead, 0, pages_seq(x))
// Three modes, each giving the part bounds bound_p:
//   balanced:  bound_p = x_p; first_part_i = (S_i + overhead) // payload,
//              splits_i = pages_i ? (C_i - 1) // payload - first_part_i + 1 : 0,
//              begin_split_p = max(p - first_part_seq(p), 0);
//   pieces (b <= num_parts, k = num_parts / b): part p = i k + j (p < k b) takes pages [j n_i / k, (j+1) n_i / k)
//              of sequence i: bound_p = S_i for j = 0, S_i + overhead + j n_i / k for j > 0; total for p >= k b;
//              splits_i = min(pages_i, k), begin_split_p = min(j, j n_i / k) (p < k b), p - k (b - 1) after.
//              k = 1 is one part per sequence.
//   snapped (b > num_parts, num_parts <= kMaxSnappedParts): bound_p = x_p moved to the nearer end of the
//              sequence that holds it (S or C of seq(x_p); ties to S), so every sequence is whole in one
//              part; or, where its largest part is strictly smaller, by count: bound_p = S_{floor(p b / P)}
//              (p < P), total (p = P); splits_i = pages_i ? 1 : 0, begin_split_p = 0.
// Pieces and snapped are taken when their largest part (pieces: ceil(max pages / k) + overhead; snapped:
// max_p (bound_{p+1} - bound_p)) is at most payload + combine_pages (schedule.py's docstring gives the time
// model); otherwise balanced. Pieces, then, halve k while ceil(max pages / k) < min_piece_pages, k / 2 >=
// kMinPiecesPerSequence and b min(max pages, k) > num_parts / 2 (min_piece_pages = 0: never); where k was halved,
// the k b pieces are spread over the parts: part p takes piece q(p) = ceil(p k b / num_parts) in place of p in the
// formulas above (bounds, begin_split), so the parts between pieces are empty.
// row p = [seq(bound_p), block(bound_p), seq(bound_{p+1}), block(bound_{p+1}), begin_split_p, 0, 0, 0];
// num_splits = [0, splits_0, splits_0 + splits_1, ...].
// All sums are 64-bit (b * max pages overflows 32 bits); outputs are truncated to int32 as torch's .to(int32).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define HF_FLASHMLA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HF_FLASHMLA_HOST_DEVICE inline
#endif

namespace hf_flashmla {
namespace schedule_core {

constexpr int kRowWidth = 8;  // tile_scheduler_metadata columns
// The snapped mode keeps its num_parts + 1 bounds in shared memory; no GPU has this many SMs
// (schedule.py's MAX_SNAPPED_PARTS: both implementations skip the mode above it).
constexpr int kMaxSnappedParts = 1024;
// The fewest pieces the min_piece_pages rule halves k down to (schedule.py's MIN_PIECES_PER_SEQUENCE).
constexpr int kMinPiecesPerSequence = 16;

enum class Mode : int { kBalanced, kPieces, kSnapped };

struct Shape {  // whole-batch quantities, fixed once the total cost is known
  int64_t total;
  int64_t payload;
  int64_t combine_pages;  // what splitting a sequence costs, in pages (schedule.py's SPLIT_COMBINE_PAGES)
  int batch;
  int num_parts;
  int overhead;  // fixed cost of a sequence, in pages
  int pieces;    // k = num_parts / batch where batch <= num_parts, else 0 (fewer after the min_piece_pages rule)
  bool spread;   // the rule halved k: part p takes piece ceil(p k b / num_parts) (piece_of_part)
  Mode mode;     // make_shape decides pieces; the kernel may switch balanced to snapped
};

// The part of the batch one block-wide pass covers: sequences base .. base + count - 1, whose cost_end
// values (global, i.e. including `carry`) sit in ends[0 .. count). carry = cost_end of sequence base - 1.
struct Chunk {
  const int64_t* ends;
  int64_t carry;
  int base;
  int count;
  bool last;  // holds sequence b - 1: bounds at the total (the clamp of searchsorted) belong to it
};

constexpr int kMaxThreads = 1024;

// Threads of the kernel's single CTA: one per sequence (fewer passes for big batches) and at least one per
// part bound, a multiple of the warp size.
inline int launch_threads(int batch, int num_parts) {
  int wanted = batch > num_parts ? batch : num_parts + 1;
  if (wanted > kMaxThreads) wanted = kMaxThreads;
  return (wanted + 31) / 32 * 32;
}

HF_FLASHMLA_HOST_DEVICE int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
HF_FLASHMLA_HOST_DEVICE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

HF_FLASHMLA_HOST_DEVICE int64_t sequence_pages(int length, int page_size) {
  const int64_t clamped = length < 0 ? 0 : length;
  return (clamped + page_size - 1) / page_size;
}

// max_cost: the largest sequence cost (pages + overhead).
HF_FLASHMLA_HOST_DEVICE Shape make_shape(int64_t total, int64_t max_cost, int batch, int num_parts, int overhead,
                                         int64_t combine_pages, int min_piece_pages) {
  const int64_t payload = (total + num_parts - 1) / num_parts;
  const int64_t max_pages = max_cost - overhead;
  int pieces = batch <= num_parts ? num_parts / batch : 0;
  const bool use_pieces = pieces > 0 && (max_pages + pieces - 1) / pieces + overhead <= payload + combine_pages;
  if (use_pieces)
    while (pieces >= 2 * kMinPiecesPerSequence && (max_pages + pieces - 1) / pieces < min_piece_pages &&
           2 * batch * min64(max_pages, pieces) > num_parts)
      pieces /= 2;
  const bool spread = use_pieces && pieces < num_parts / batch;
  return Shape{total, payload, combine_pages, batch, num_parts, overhead, pieces, spread,
               use_pieces ? Mode::kPieces : Mode::kBalanced};
}

// Whether the snapped bounds must be computed (their largest part then decides, see whole_fits).
HF_FLASHMLA_HOST_DEVICE bool snapping_considered(const Shape& s) {
  return s.batch > s.num_parts && s.num_parts <= kMaxSnappedParts;
}

HF_FLASHMLA_HOST_DEVICE bool whole_fits(int64_t largest_part, const Shape& s) {
  return largest_part <= s.payload + s.combine_pages;
}

HF_FLASHMLA_HOST_DEVICE int64_t balanced_bound(int p, const Shape& s) {
  return min64(static_cast<int64_t>(p) * s.payload, s.total);
}

// x moved to the nearer end of [cost_begin, cost_end), the cost range of the sequence that holds it.
HF_FLASHMLA_HOST_DEVICE int64_t snap_to_sequence(int64_t x, int64_t cost_begin, int64_t cost_end) {
  return x - cost_begin <= cost_end - x ? cost_begin : cost_end;
}

HF_FLASHMLA_HOST_DEVICE int64_t first_part(int64_t cost_begin, const Shape& s) {
  return (cost_begin + s.overhead) / s.payload;
}

// Number of parts that touch the pages of a sequence (its page region is [S + overhead, C) in cost space).
HF_FLASHMLA_HOST_DEVICE int64_t sequence_splits(int64_t pages, int64_t cost_begin, int64_t cost_end, const Shape& s) {
  if (pages == 0) return 0;
  if (s.mode == Mode::kPieces) return min64(pages, s.pieces);
  if (s.mode == Mode::kSnapped) return 1;
  return (cost_end - 1) / s.payload - first_part(cost_begin, s) + 1;
}

// Bound p opens row p (columns 0, 1, 4..7) and closes row p - 1 (columns 2, 3); every bound is placed by
// exactly one thread, so no two threads write the same word.
HF_FLASHMLA_HOST_DEVICE void write_bound(int* metadata, int p, int seq, int64_t block, int64_t begin_split,
                                         const Shape& s) {
  if (p < s.num_parts) {
    int* row = metadata + static_cast<int64_t>(p) * kRowWidth;
    row[0] = seq;
    row[1] = static_cast<int>(block);
    row[4] = static_cast<int>(begin_split);
    row[5] = 0;
    row[6] = 0;
    row[7] = 0;
  }
  if (p > 0) {
    int* row = metadata + static_cast<int64_t>(p - 1) * kRowWidth;
    row[2] = seq;
    row[3] = static_cast<int>(block);
  }
}

// The piece whose bound is part bound p: p itself, or, spread, ceil(p k b / num_parts) (k b pieces over num_parts
// parts: part p holds piece q iff q = piece_of_part(p) < piece_of_part(p + 1)).
HF_FLASHMLA_HOST_DEVICE int64_t piece_of_part(int p, const Shape& s) {
  const int64_t pieced = static_cast<int64_t>(s.pieces) * s.batch;
  return s.spread ? (p * pieced + s.num_parts - 1) / s.num_parts : p;
}

// Pieces: bound p opens piece q = piece_of_part(p); q < k b is piece j = q % k of sequence i = q / k (placed by
// the chunk that holds i, no search needed; a bound at the sequence's end, n_i = 0, belongs to sequence i + 1,
// block 0, as searchsorted puts it), q >= k b the total (the last chunk, clamped to sequence b - 1 as searchsorted).
HF_FLASHMLA_HOST_DEVICE void place_piece_bounds(int* metadata, const Chunk& chunk, const Shape& s, int thread,
                                                int num_threads) {
  const int64_t pieced = static_cast<int64_t>(s.pieces) * s.batch;
  for (int p = thread; p <= s.num_parts; p += num_threads) {
    const int64_t q = piece_of_part(p, s);
    int local;
    if (q < pieced) {
      const int i = static_cast<int>(q / s.pieces);
      if (i < chunk.base || i >= chunk.base + chunk.count) continue;
      local = i - chunk.base;
    } else {
      if (!chunk.last) continue;
      local = chunk.count - 1;
    }
    const int64_t cost_begin = local > 0 ? chunk.ends[local - 1] : chunk.carry;
    const int64_t cost_end = chunk.ends[local];
    const int64_t pages = cost_end - cost_begin - s.overhead;
    const int seq = chunk.base + local;
    if (q >= pieced) {
      write_bound(metadata, p, seq, pages, q - static_cast<int64_t>(s.pieces) * seq, s);
      continue;
    }
    const int64_t j = q % s.pieces;
    const int64_t start = j * pages / s.pieces;
    const int64_t bound = j > 0 ? cost_begin + s.overhead + start : cost_begin;
    const int64_t begin_split = min64(j, start);
    if (bound >= cost_end && seq + 1 < s.batch)
      write_bound(metadata, p, seq + 1, 0, begin_split, s);
    else
      write_bound(metadata, p, seq, min64(max64(bound - cost_begin - s.overhead, 0), pages), begin_split, s);
  }
}

// The sequence (index within the chunk) that holds cost value `bound`: the first whose cost_end exceeds it,
// clamped to the chunk's last (the clamp of searchsorted to b - 1; only the last chunk is asked for bounds
// at or past its end). Binary search of the chunk's cost_end values.
HF_FLASHMLA_HOST_DEVICE int locate_in_chunk(const Chunk& chunk, int64_t bound) {
  int lo = 0, hi = chunk.count;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (chunk.ends[mid] > bound) hi = mid; else lo = mid + 1;
  }
  return lo < chunk.count ? lo : chunk.count - 1;
}

// Whether this chunk places bound value `bound`: it lies in the chunk's cost range [carry, ends[count - 1]),
// or at or past the total for the last chunk.
HF_FLASHMLA_HOST_DEVICE bool chunk_holds(const Chunk& chunk, int64_t bound) {
  return bound >= chunk.carry && (bound < chunk.ends[chunk.count - 1] || chunk.last);
}

// The sequence whose start is part p's bound in the by-count candidate (p < num_parts): floor(p b / P).
HF_FLASHMLA_HOST_DEVICE int64_t first_sequence_by_count(int p, const Shape& s) {
  return static_cast<int64_t>(p) * s.batch / s.num_parts;
}

// Snapped mode, first step, for the bounds p = thread, thread + num_threads, .. <= num_parts: snapped[p], the
// balanced bound moved to the nearer end of its sequence, where that bound falls in this chunk; by_count[p], the
// start of sequence floor(p b / P) (the total for p = P), where that sequence is in this chunk. The caller then
// takes the candidate with the smaller largest difference (by_count_preferred).
HF_FLASHMLA_HOST_DEVICE void snap_chunk_bounds(int64_t* snapped, int64_t* by_count, const Chunk& chunk,
                                               const Shape& s, int thread, int num_threads) {
  for (int p = thread; p <= s.num_parts; p += num_threads) {
    const int64_t x = balanced_bound(p, s);
    if (chunk_holds(chunk, x)) {
      const int local = locate_in_chunk(chunk, x);
      snapped[p] = snap_to_sequence(x, local > 0 ? chunk.ends[local - 1] : chunk.carry, chunk.ends[local]);
    }
    if (p == s.num_parts) {
      if (chunk.last) by_count[p] = s.total;
      continue;
    }
    const int64_t i = first_sequence_by_count(p, s);
    if (i >= chunk.base && i < chunk.base + chunk.count) {
      const int local = static_cast<int>(i - chunk.base);
      by_count[p] = local > 0 ? chunk.ends[local - 1] : chunk.carry;
    }
  }
}

// Whether the by-count bounds replace the nearest-end ones: only where their largest part is strictly smaller, so
// that schedules the nearest-end snapping already balances stay as they were.
HF_FLASHMLA_HOST_DEVICE bool by_count_preferred(int64_t largest_by_count, int64_t largest_nearest) {
  return largest_by_count < largest_nearest;
}

// Places the bounds p = thread, thread + num_threads, .. <= num_parts that fall in this chunk's cost range
// (balanced: x_p; snapped: snapped[p], computed by snap_chunk_bounds). seq(bound) is found by a binary
// search of the chunk's cost_end values: the first sequence whose cost_end exceeds the bound.
HF_FLASHMLA_HOST_DEVICE void place_chunk_bounds(int* metadata, const Chunk& chunk, const Shape& s,
                                                const int64_t* snapped, int thread, int num_threads) {
  if (s.mode == Mode::kPieces) {
    place_piece_bounds(metadata, chunk, s, thread, num_threads);
    return;
  }
  for (int p = thread; p <= s.num_parts; p += num_threads) {
    const int64_t bound = s.mode == Mode::kSnapped ? snapped[p] : balanced_bound(p, s);
    if (!chunk_holds(chunk, bound)) continue;
    const int local = locate_in_chunk(chunk, bound);
    const int64_t cost_begin = local > 0 ? chunk.ends[local - 1] : chunk.carry;
    const int64_t pages = chunk.ends[local] - cost_begin - s.overhead;
    const int64_t block = min64(max64(bound - cost_begin - s.overhead, 0), pages);
    const int64_t begin_split = s.mode == Mode::kSnapped ? 0 : max64(p - first_part(cost_begin, s), 0);
    write_bound(metadata, p, chunk.base + local, block, begin_split, s);
  }
}

}  // namespace schedule_core
}  // namespace hf_flashmla
