// Merging the partial results of a split sequence through their lse, one query row per warp (the combine kernels
// of mla_decode_kernel.cu).
// A warp reads a row's fp32 partials 512 contiguous bytes at a time (a lane owns 16 of the 512 columns: four runs
// of 4), with the splits' weights one per lane, and adds them up in fp32. Loads bypass L1 (ld.global.cg): the partials were written by other SMs.
#pragma once

#include "mla_decode_common.cuh"

namespace hf_flashmla {
namespace decode_detail {

// A sequence's splits: its partial rows are base .. base + count - 1 of the workspace. The schedule wrote them
// before the decode kernel ran, so the combine kernels read them before waiting for the decode grid: after the
// wait a row costs one L2 round trip (its lse and partials) instead of two.
struct SequenceSplits {
  int base, count;
};

// Loop bounds and branches of these helpers are warp-uniform through shuffles, so every lane takes the same path.
__device__ __forceinline__ SequenceSplits sequence_splits(const MlaDecodeParams& p, int batch) {
  const int base = __shfl_sync(0xffffffff, p.num_splits[batch], 0);
  return SequenceSplits{base, __shfl_sync(0xffffffff, p.num_splits[batch + 1], 0) - base};
}

struct SplitRow {
  const float* lse_col;  // lse_accum at (first split, row): split k's lse is lse_col[k * rows_total]
  int split_base, num_splits, rows_total, grow;
  __device__ float lse_of(int k) const { return __ldcg(lse_col + static_cast<int64_t>(k) * rows_total); }
};

__device__ __forceinline__ SplitRow split_row(const MlaDecodeParams& p, const SequenceSplits& splits, int grow) {
  const int rows_total = p.s_q * p.h_q;
  return SplitRow{p.lse_accum + static_cast<int64_t>(splits.base) * rows_total + grow, splits.base, splits.count,
                  rows_total, grow};
}

// The row's merged lse (natural log), +inf when no split saw a key (the row is then written as zeros), NaN when a
// split's is (NaN in q or in a visible key propagates; fmaxf alone would drop it). One pass (running max and sum per
// lane, merged across the warp), the lse loads of up to 128 splits issued together: a row's merge is a chain of L2
// round trips, and this one takes one where the two-pass form took 2 x splits / 32.
__device__ __forceinline__ void fold_lse(float& max_lse, float& sum, bool& has_nan, float x) {
  if (x == -INFINITY) return;
  if (x != x) {
    has_nan = true;
    return;
  }
  const float m = fmaxf(max_lse, x);
  sum = sum * __expf(max_lse - m) + __expf(x - m);
  max_lse = m;
}

// Each lane's running (max, sum) merged across the warp: the lse every lane returns.
__device__ __forceinline__ float warp_merged_lse(float max_lse, float sum, bool has_nan) {
  if (__any_sync(0xffffffff, has_nan)) return NAN;
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const float other_max = __shfl_xor_sync(0xffffffff, max_lse, off);
    const float other_sum = __shfl_xor_sync(0xffffffff, sum, off);
    const float m = fmaxf(max_lse, other_max);
    if (m != -INFINITY) sum = sum * __expf(max_lse - m) + other_sum * __expf(other_max - m);
    max_lse = m;
  }
  return max_lse == -INFINITY ? INFINITY : max_lse + __logf(sum);
}

// Columns 4 (lane + 32 c) .. + 3 of partial row `row` (a split's row of the workspace).
__device__ __forceinline__ float4 load_partial(const MlaDecodeParams& p, int64_t row, int lane, int c) {
  return __ldcg(reinterpret_cast<const float4*>(p.o_accum + row * kHeadDimV) + lane + 32 * c);
}

// acc += weight * v, one float4 of a lane's columns.
__device__ __forceinline__ void add_weighted(float4& acc, float weight, const float4& v) {
  acc.x += weight * v.x;
  acc.y += weight * v.y;
  acc.z += weight * v.z;
  acc.w += weight * v.w;
}

__device__ __forceinline__ float merged_lse(const SplitRow& r, int lane) {
  constexpr int kLoadsInFlight = 4;
  float max_lse = -INFINITY, sum = 0.f;
  bool has_nan = false;
  for (int k0 = 0; k0 < r.num_splits; k0 += 32 * kLoadsInFlight) {
    float x[kLoadsInFlight];
#pragma unroll
    for (int i = 0; i < kLoadsInFlight; ++i) {
      const int k = k0 + 32 * i + lane;
      x[i] = k < r.num_splits ? r.lse_of(k) : -INFINITY;
    }
#pragma unroll
    for (int i = 0; i < kLoadsInFlight; ++i) fold_lse(max_lse, sum, has_nan, x[i]);
  }
  return warp_merged_lse(max_lse, sum, has_nan);
}

// acc += weight_k * partial_k over this warp's splits k = split_first + split_step * j (this lane's 16 columns:
// 4 (lane + 32 c) .. + 3 in acc[c]). Lane j holds the weight of the warp's j-th split (32 at a time), and the
// partial rows are read 8 splits ahead, so that a warp with few splits of a long row waits for L2 about twice.
__device__ __forceinline__ void accumulate_splits(float4 (&acc)[4], const MlaDecodeParams& p, const SplitRow& r,
                                                  float lse_value, int split_first, int split_step, int lane) {
  if (__shfl_sync(0xffffffff, lse_value == INFINITY, 0)) return;
  const int mine = r.num_splits > split_first ? (r.num_splits - split_first + split_step - 1) / split_step : 0;
  for (int j0 = 0; j0 < mine; j0 += 32) {
    const float my_weight =
        j0 + lane < mine ? __expf(r.lse_of(split_first + split_step * (j0 + lane)) - lse_value) : 0.f;
    const int count = min(32, mine - j0);
#pragma unroll 8
    for (int jj = 0; jj < count; ++jj) {
      const float weight = __shfl_sync(0xffffffff, my_weight, jj);  // jj is warp-uniform
      const int64_t row =
          static_cast<int64_t>(r.split_base + split_first + split_step * (j0 + jj)) * r.rows_total + r.grow;
#pragma unroll
      for (int c = 0; c < 4; ++c) add_weighted(acc[c], weight, load_partial(p, row, lane, c));
    }
  }
}

template <typename Elem>
__device__ __forceinline__ Elem* out_row_of(const MlaDecodeParams& p, int batch, int grow) {
  return static_cast<Elem*>(p.out) + (static_cast<int64_t>(batch) * p.s_q * p.h_q + grow) * kHeadDimV;
}

__device__ __forceinline__ void store_merged_lse(const MlaDecodeParams& p, int batch, int grow, float lse_value) {
  const int token = grow / p.h_q, head = grow % p.h_q;
  p.lse[(static_cast<int64_t>(batch) * p.h_q + head) * p.s_q + token] = lse_value;
}

// One warp writes row `grow` of sequence `batch`: this lane's 16 columns (acc[c]: columns 4 (lane + 32 c) .. + 3)
// to out and the lse.
template <typename Elem>
__device__ __forceinline__ void write_merged_row(const MlaDecodeParams& p, int batch, int grow, int lane,
                                                 const float4 (&acc)[4], float lse_value) {
  Elem* out_row = out_row_of<Elem>(p, batch, grow);
#pragma unroll
  for (int c = 0; c < 4; ++c)
    *reinterpret_cast<uint2*>(out_row + 4 * (lane + 32 * c)) =
        make_uint2(ElemTraits<Elem>::pack(acc[c].x, acc[c].y), ElemTraits<Elem>::pack(acc[c].z, acc[c].w));
  if (lane == 0) store_merged_lse(p, batch, grow, lse_value);
}

// A sequence without splits has no pages in its schedule: its rows are the merge of nothing (out = 0, lse = +inf),
// or NaN where its length changed since the schedule was computed (length_changed; the lengths, too, are read
// before the wait).
__device__ __forceinline__ bool empty_but_length_changed(const MlaDecodeParams& p, const SequenceSplits& splits,
                                                         int batch) {
  return splits.count == 0 && length_changed(p, batch);
}

template <typename Elem>
__device__ __forceinline__ void write_nan_row(const MlaDecodeParams& p, int batch, int grow, int lane) {
  const float4 nan4 = make_float4(NAN, NAN, NAN, NAN);
  const float4 acc[4] = {nan4, nan4, nan4, nan4};
  write_merged_row<Elem>(p, batch, grow, lane, acc, NAN);
}

// One warp merges row `grow` of sequence `batch` and writes it to out / lse.
template <typename Elem>
__device__ __forceinline__ void merge_row(const MlaDecodeParams& p, const SequenceSplits& splits, int batch, int grow,
                                          int lane) {
  const SplitRow r = split_row(p, splits, grow);
  const float lse_value = merged_lse(r, lane);
  float4 acc[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) acc[c] = make_float4(0.f, 0.f, 0.f, 0.f);
  accumulate_splits(acc, p, r, lse_value, 0, 1, lane);
  write_merged_row<Elem>(p, batch, grow, lane, acc, lse_value);
}

// The merged lse of a row from one lse value per lane (-inf where a lane holds none), +inf when no split saw a key.
__device__ __forceinline__ float merged_lse_of_lanes(float my_lse) {
  float max_lse = -INFINITY, sum = 0.f;
  bool has_nan = false;
  fold_lse(max_lse, sum, has_nan, my_lse);
  return warp_merged_lse(max_lse, sum, has_nan);
}

// merge_row for a sequence split at most kFewSplits ways (warp-uniform: the caller tests num_splits): each lane loads
// its split's lse and every split's partial columns at once, so the row costs one L2 round trip after the decode
// grid ends instead of three (lse for the merged lse, lse again for the weights, then the partials), the most
// common combine (two pieces per sequence at b = 64 on 132 parts, two or three splits under the balanced cut).
constexpr int kFewSplits = 4;

template <typename Elem>
__device__ __forceinline__ void merge_row_few_splits(const MlaDecodeParams& p, const SequenceSplits& splits, int batch,
                                                     int grow, int lane) {
  const SplitRow r = split_row(p, splits, grow);
  const float my_lse = lane < r.num_splits ? r.lse_of(lane) : -INFINITY;
  float4 part[kFewSplits][4];
#pragma unroll
  for (int k = 0; k < kFewSplits; ++k) {
    if (k >= r.num_splits) break;
    const int64_t row = static_cast<int64_t>(r.split_base + k) * r.rows_total + r.grow;
#pragma unroll
    for (int c = 0; c < 4; ++c) part[k][c] = load_partial(p, row, lane, c);
  }
  const float lse_value = merged_lse_of_lanes(my_lse);
  float4 acc[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) acc[c] = make_float4(0.f, 0.f, 0.f, 0.f);
  // exp(-inf - lse) = 0: splits that saw no key, and every split of a row that saw none (lse = +inf), weigh nothing.
  const float my_weight = __expf(my_lse - lse_value);
#pragma unroll
  for (int k = 0; k < kFewSplits; ++k) {
    if (k >= r.num_splits) break;
    const float weight = __shfl_sync(0xffffffff, my_weight, k);
#pragma unroll
    for (int c = 0; c < 4; ++c) add_weighted(acc[c], weight, part[k][c]);
  }
  write_merged_row<Elem>(p, batch, grow, lane, acc, lse_value);
}

}  // namespace decode_detail
}  // namespace hf_flashmla
