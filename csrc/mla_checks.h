// The structural checks of mla_decode's inputs: shapes, dtypes, layouts and devices, never values (no sync).
// They run in C++ on the op's hot path, where a few dozen of them cost well under a microsecond, while the same
// checks in Python cost ~10 us per call on a fast host (issue 29). Each failure's message starts with the Python
// exception that hf_flashmla/validation.py raises for it ("ValueError: " or "TypeError: "), then the argument's
// name and what was expected; hf_flashmla/_ops.py raises that exception with the rest of the message.
// tests/test_csrc_checks.py builds this header on the CPU and compares both on every bad input. Torch headers only,
// no CUDA: the CPU test compiles it.
//
// How a failure is raised: the message is built here from strings and std::to_string (no iostreams), then handed to
// c10::detail::torchCheckFail, the function TORCH_CHECK calls, which throws c10::Error from libc10. On the device (torch
// 2.11, the extension built by BuildExtension with the machine's own g++) a failed check whose message held a number
// ended the process with a segmentation fault, while one of strings alone was raised (both went through c10::str,
// an std::ostringstream instantiated in this library; TORCH_CHECK_VALUE's c10::ValueError crashed the same way). So
// nothing here streams.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>

#include <torch/library.h>
#include <torch/torch.h>

namespace hf_flashmla {
namespace checks {

inline void append_text(std::string& out, const char* text) { out += text; }
inline void append_text(std::string& out, const std::string& text) { out += text; }
inline void append_text(std::string& out, const c10::Device& device) { out += device.str(); }
template <typename Int, typename = std::enable_if_t<std::is_integral_v<Int> && !std::is_same_v<Int, bool> &&
                                                    !std::is_same_v<Int, char>>>
inline void append_text(std::string& out, Int value) {
  out += std::to_string(value);
}

// Throws c10::Error (RuntimeError in Python) with the parts' text as its message.
template <typename... Parts>
[[noreturn]] inline void fail(const char* func, const char* file, uint32_t line, const Parts&... parts) {
  std::string message;
  (append_text(message, parts), ...);
  ::c10::detail::torchCheckFail(func, file, line, message);
}

}  // namespace checks
}  // namespace hf_flashmla

// A failed check: RuntimeError in Python, its message prefixed with the exception _ops.py raises instead.
#define MLA_CHECK_VALUE(cond, ...)                                                                       \
  do {                                                                                                   \
    if (C10_UNLIKELY(!(cond)))                                                                           \
      ::hf_flashmla::checks::fail(__func__, __FILE__, __LINE__, "ValueError: ", __VA_ARGS__);           \
  } while (false)
#define MLA_CHECK_TYPE(cond, ...)                                                                        \
  do {                                                                                                   \
    if (C10_UNLIKELY(!(cond)))                                                                           \
      ::hf_flashmla::checks::fail(__func__, __FILE__, __LINE__, "TypeError: ", __VA_ARGS__);            \
  } while (false)

namespace hf_flashmla {
namespace checks {

constexpr int64_t kHeadDim = 576;   // 512 latent + 64 rope
constexpr int64_t kHeadDimV = 512;  // V is the first 512 values of each cached token
constexpr int64_t kFp8TokenBytes = 656;  // FlashMLA's FP8 layout: 512 e4m3, 4 float32 scales, 64 bf16 rope values
constexpr int64_t kPageSize = 64;
constexpr int64_t kMetadataWidth = 8;
constexpr int64_t kNumKvHeads = 1;  // one latent head (hf_flashmla/dispatch.py sends other h_kv elsewhere)
constexpr int64_t kIntMax = std::numeric_limits<int>::max();
constexpr int64_t kMaxGridRows = 65535;  // CUDA's gridDim.y: the combine has a grid row per sequence, the decode per part
constexpr uintptr_t kTmaAlignment = 16;  // TMA reads q and k_cache from 16-byte aligned addresses

// q and k_cache are read with TMA, from a 16-byte aligned start (validation.py's _require_aligned).
inline void require_aligned(const char* name, const at::Tensor& t) {
  const uintptr_t offset = reinterpret_cast<uintptr_t>(t.data_ptr()) % kTmaAlignment;
  MLA_CHECK_VALUE(offset == 0, name, ": expected data aligned to ", static_cast<int64_t>(kTmaAlignment),
                  " bytes (the kernel reads it with TMA), got a view starting ", static_cast<int64_t>(offset),
                  " bytes past such a boundary; call ", name, ".clone()");
}

// Sizes the way Python prints a tuple of ints: (2, 16, 576), (3,), ().
inline std::string int_tuple(at::IntArrayRef values) {
  std::string text = "(";
  for (size_t i = 0; i < values.size(); ++i) text += (i ? ", " : "") + std::to_string(values[i]);
  return text + (values.size() == 1 ? ",)" : ")");
}

inline std::string shape_of(const at::Tensor& t) { return int_tuple(t.sizes()); }
inline std::string strides_of(const at::Tensor& t) { return int_tuple(t.strides()); }

// A float the way Python's repr prints the common cases: 0.0, 100.0, -0.1, nan, inf (the shortest digits that
// read back to the same double).
inline std::string float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char text[32];
  if (value == std::floor(value) && std::fabs(value) < 1e16) {
    std::snprintf(text, sizeof(text), "%.1f", value);
    return text;
  }
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(text, sizeof(text), "%.*g", digits, value);
    if (std::strtod(text, nullptr) == value) break;
  }
  return text;
}

inline std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    case at::kBool: return "bool";
    case at::kFloat8_e4m3fn: return "float8_e4m3fn";
    case at::kFloat8_e5m2: return "float8_e5m2";
    default: return c10::toString(type);
  }
}

inline void require_rank(const char* name, const at::Tensor& t, int64_t rank, const char* layout) {
  MLA_CHECK_VALUE(t.dim() == rank, name, ": expected a rank-", rank, " tensor ", layout, ", got shape ",
                    shape_of(t));
}

inline void require_dtype(const char* name, const at::Tensor& t, at::ScalarType type, const char* why = "") {
  MLA_CHECK_TYPE(t.scalar_type() == type, name, ": expected dtype ", dtype_name(type), why, ", got ",
                   dtype_name(t.scalar_type()));
}

inline void require_device(const char* name, const at::Tensor& t, const at::Device& device) {
  MLA_CHECK_VALUE(t.device() == device, name, ": expected a tensor on ", device, " (the device of q), got one on ",
                    t.device());
}

inline void require_contiguous(const char* name, const at::Tensor& t, const char* why = "") {
  MLA_CHECK_VALUE(t.is_contiguous(), name, ": expected a contiguous tensor", why, ", got strides ", strides_of(t));
}

inline bool is_fp8_cache_dtype(at::ScalarType type) { return type == at::kByte || type == at::kFloat8_e4m3fn; }

// q, k_cache, block_table, cache_seqlens, head_dim_v, softmax_scale for the sm_90 kernel (check_inputs's rules in
// hf_flashmla/validation.py with for_kernel=True), plus the kernel's own limits (sizes that fit its int fields).
// is_fp8: k_cache holds FlashMLA's FP8 layout (bytes, 656 per token) and q is bf16.
inline void check_decode_inputs(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& block_table,
                                const at::Tensor& cache_seqlens, int64_t head_dim_v, double softmax_scale,
                                bool is_fp8 = false) {
  require_rank("q", q, 4, "[batch, s_q, h_q, head_dim]");
  const int64_t batch = q.size(0), s_q = q.size(1), h_q = q.size(2);
  MLA_CHECK_VALUE(batch >= 1 && s_q >= 1 && h_q >= 1, "q: expected batch, s_q and h_q >= 1, got shape ",
                    shape_of(q));
  MLA_CHECK_VALUE(q.size(3) == kHeadDim, "q: expected head_dim (last dim) ", kHeadDim, ", got ", q.size(3));
  const auto dtype = q.scalar_type();
  if (is_fp8) {
    MLA_CHECK_TYPE(dtype == at::kBFloat16,
                   "q: expected dtype bfloat16 with is_fp8_kvcache=True (the FP8 kernels take bf16 queries; float32 "
                   "on the reference path), got ", dtype_name(dtype));
  } else {
    MLA_CHECK_TYPE(dtype == at::kBFloat16 || dtype == at::kHalf,
                   "q: expected dtype bfloat16 or float16 (float32 only on the reference path), got ",
                   dtype_name(dtype));
  }
  MLA_CHECK_VALUE(q.is_contiguous(), "q: expected a contiguous tensor (the kernel reads it densely), got strides ",
                    strides_of(q), "; call q.contiguous()");
  MLA_CHECK_VALUE(batch <= kMaxGridRows, "q: expected a batch of at most ", kMaxGridRows,
                  " on the sm_90 kernel (its combine grid has a row per sequence), got ", batch);
  require_aligned("q", q);
  MLA_CHECK_VALUE(s_q * h_q <= kIntMax, "q: expected s_q * h_q below 2^31, got shape ", shape_of(q));
  const at::Device device = q.device();

  require_rank("k_cache", k_cache, 4, "[num_blocks, page_size, h_kv, head_dim]");
  require_device("k_cache", k_cache, device);
  const auto cache_dtype = k_cache.scalar_type();
  if (is_fp8) {
    MLA_CHECK_TYPE(is_fp8_cache_dtype(cache_dtype), "k_cache: expected dtype uint8 or float8_e4m3fn with "
                   "is_fp8_kvcache=True (FlashMLA's FP8 layout, bytes), got ", dtype_name(cache_dtype));
  } else {
    MLA_CHECK_TYPE(!is_fp8_cache_dtype(cache_dtype), "k_cache: expected dtype ", dtype_name(dtype),
                   " (the dtype of q), got ", dtype_name(cache_dtype),
                   "; an FP8 latent cache needs is_fp8_kvcache=True");
    require_dtype("k_cache", k_cache, dtype, " (the dtype of q)");
  }
  MLA_CHECK_VALUE(k_cache.size(1) == kPageSize, "k_cache: expected page size (dim 1) ", kPageSize, ", got ",
                    k_cache.size(1));
  if (is_fp8) {
    MLA_CHECK_VALUE(k_cache.size(3) == kFp8TokenBytes, "k_cache: expected ", kFp8TokenBytes,
                    " bytes per token (last dim) with is_fp8_kvcache=True (", kHeadDimV, " e4m3 values, ",
                    kHeadDimV / 128, " float32 scales, ", kHeadDim - kHeadDimV, " bf16 rope values), got ",
                    k_cache.size(3));
  } else {
    MLA_CHECK_VALUE(k_cache.size(3) == kHeadDim, "k_cache: expected head_dim (last dim) ", kHeadDim, ", got ",
                    k_cache.size(3));
  }
  const int64_t h_kv = k_cache.size(2);
  MLA_CHECK_VALUE(h_kv >= 1 && h_q % h_kv == 0, "k_cache: expected h_kv (dim 2) >= 1 dividing h_q = ", h_q,
                    ", got h_kv = ", h_kv);
  MLA_CHECK_VALUE(h_kv == kNumKvHeads, "k_cache: the sm_90 kernel expects h_kv = ", kNumKvHeads, ", got ", h_kv);
  require_contiguous("k_cache", k_cache, " (pages are addressed by block id)");
  require_aligned("k_cache", k_cache);
  MLA_CHECK_VALUE(k_cache.size(0) <= kIntMax, "k_cache: expected fewer than 2^31 pages, got ", k_cache.size(0));

  require_rank("block_table", block_table, 2, "[batch, max_blocks_per_seq]");
  require_device("block_table", block_table, device);
  require_dtype("block_table", block_table, at::kInt);
  MLA_CHECK_VALUE(block_table.size(0) == batch, "block_table: expected ", batch,
                    " rows (the batch size of q), got shape ", shape_of(block_table));
  // Rows may be strided (a slice of a wider table): the kernel reads the row stride.
  MLA_CHECK_VALUE(block_table.size(1) == 0 || block_table.stride(1) == 1,
                    "block_table: expected last-dim stride 1, got strides ", strides_of(block_table));
  MLA_CHECK_VALUE(block_table.stride(0) <= kIntMax && block_table.size(1) <= kIntMax,
                    "block_table: expected a row stride below 2^31, got strides ", strides_of(block_table));

  require_rank("cache_seqlens", cache_seqlens, 1, "[batch]");
  require_device("cache_seqlens", cache_seqlens, device);
  require_dtype("cache_seqlens", cache_seqlens, at::kInt);
  MLA_CHECK_VALUE(cache_seqlens.size(0) == batch, "cache_seqlens: expected shape (", batch,
                    ",) (the batch size of q), got ", shape_of(cache_seqlens));
  require_contiguous("cache_seqlens", cache_seqlens);

  MLA_CHECK_VALUE(head_dim_v == kHeadDimV, "head_dim_v: expected ", kHeadDimV, " (V is the first ", kHeadDimV,
                    " values of K), got ", head_dim_v);
  MLA_CHECK_VALUE(std::isfinite(softmax_scale) && softmax_scale > 0,
                    "softmax_scale: expected a finite positive float, got ", float_repr(softmax_scale));
  // The kernel takes it as a float: a larger double would be inf there.
  MLA_CHECK_VALUE(softmax_scale <= std::numeric_limits<float>::max(),
                    "softmax_scale: expected a float32-representable value (at most 3.403e+38), got ",
                    float_repr(softmax_scale));
}

// First-generation metadata (check_schedule_tensors's rules), and the newest generation's copy of the lengths.
inline void check_schedule_tensors(const at::Tensor& tile_scheduler_metadata, const at::Tensor& num_splits,
                                   int64_t batch, const at::Device& device,
                                   const std::optional<at::Tensor>& schedule_seqlens) {
  require_dtype("tile_scheduler_metadata", tile_scheduler_metadata, at::kInt);
  MLA_CHECK_VALUE(tile_scheduler_metadata.dim() == 2 && tile_scheduler_metadata.size(0) >= 1 &&
                        tile_scheduler_metadata.size(1) == kMetadataWidth,
                    "tile_scheduler_metadata: expected shape [num_sm_parts >= 1, ", kMetadataWidth, "], got ",
                    shape_of(tile_scheduler_metadata));
  MLA_CHECK_VALUE(tile_scheduler_metadata.is_contiguous(), "tile_scheduler_metadata: expected a contiguous tensor");
  require_device("tile_scheduler_metadata", tile_scheduler_metadata, device);
  MLA_CHECK_VALUE(tile_scheduler_metadata.size(0) <= kMaxGridRows, "tile_scheduler_metadata: expected at most ",
                  kMaxGridRows, " parts (the decode grid has a row per part), got ", tile_scheduler_metadata.size(0));
  require_dtype("num_splits", num_splits, at::kInt);
  MLA_CHECK_VALUE(num_splits.dim() == 1 && num_splits.size(0) == batch + 1, "num_splits: expected shape (",
                    batch + 1, ",) (batch + 1), got ", shape_of(num_splits),
                    "; was the metadata computed for another batch?");
  MLA_CHECK_VALUE(num_splits.is_contiguous(), "num_splits: expected a contiguous tensor");
  require_device("num_splits", num_splits, device);
  if (schedule_seqlens.has_value()) {
    const at::Tensor& lengths = *schedule_seqlens;
    require_dtype("schedule_seqlens", lengths, at::kInt);
    MLA_CHECK_VALUE(lengths.dim() == 1 && lengths.size(0) == batch, "schedule_seqlens: expected shape (", batch,
                      ",), got ", shape_of(lengths));
    require_contiguous("schedule_seqlens", lengths);
    require_device("schedule_seqlens", lengths, device);
  }
}

}  // namespace checks
}  // namespace hf_flashmla
