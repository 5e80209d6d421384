// CPU kernels of the zipml operators: parallel drivers over the span kernels of span.h, with
// float16/bfloat16/float64 converted to float32 in cache-sized chunks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "../common/pack.h"
#include "simd_convert.h"
#include "span.h"

namespace zipml::cpu {
namespace {

constexpr int64_t kBlock = 4096;  // elements per scheduling unit; a multiple of every SIMD width
constexpr int64_t kChunk = 1024;  // elements converted at a time for non-float32 dtypes
// Outputs at least this large are written with non-temporal stores (SpanParams::stream_out): far
// beyond a server core's share of the last-level cache, where the result cannot stay cached anyway.
constexpr int64_t kStreamBytes = int64_t{64} << 20;

kernel::Levels levels_of(const std::optional<at::Tensor>& table, int64_t num_levels) {
  return kernel::Levels{table ? table->data_ptr<float>() : nullptr, static_cast<int>(num_levels)};
}

// Calls f(begin, end, group) on pieces of [0, numel) in parallel; a piece never straddles two scale
// groups of `inner` elements, and starts on a block boundary or a group boundary.
template <class F>
void for_each_span(int64_t numel, int64_t inner, F&& f) {
  if (numel == 0) return;
  const int64_t blocks = (numel + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    int64_t begin = b0 * kBlock;
    const int64_t end = std::min(b1 * kBlock, numel);
    while (begin < end) {
      const int64_t group = begin / inner;
      const int64_t stop = std::min(end, (group + 1) * inner);
      f(begin, stop, group);
      begin = stop;
    }
  });
}

// float16/bfloat16 <-> float32: vectorized (bit-identical, simd_convert.h) while a SIMD span variant
// is active, c10's scalar conversions under the scalar one, so that the tests comparing the variants
// compare the conversions too. float64 converts in plain loops, which the compiler vectorizes.
const FloatConverters* active_converters() {
  return &active_span_kernels() == &scalar_span_kernels() ? nullptr : avx2_float_converters();
}

template <class scalar_t>
void load_floats(const scalar_t* src, float* dst, int64_t n, const FloatConverters* simd) {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    if (simd) return simd->from_half(src, dst, n);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    if (simd) return simd->from_bfloat16(src, dst, n);
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <class scalar_t>
void store_floats(const float* src, scalar_t* dst, int64_t n, const FloatConverters* simd) {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    if (simd) return simd->to_half(src, dst, n);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    if (simd) return simd->to_bfloat16(src, dst, n);
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

// Runs a float32 span kernel on elements [begin, end) of a tensor of dtype scalar_t, converting
// through stack buffers unless scalar_t is float.
template <class scalar_t, class Kernel>
void on_float_chunks(const scalar_t* x, int64_t begin, int64_t end, Kernel&& kernel) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    kernel(x + begin, begin, end - begin);
  } else {
    const FloatConverters* simd = active_converters();
    float buf[kChunk];
    for (int64_t b = begin; b < end; b += kChunk) {
      const int64_t n = std::min(kChunk, end - b);
      load_floats(x + b, buf, n, simd);
      kernel(static_cast<const float*>(buf), b, n);
    }
  }
}

SpanParams params_for(const float* scale, int64_t group, kernel::Levels levels, int64_t rounding,
                      int64_t seed, int64_t offset) {
  const float s = scale[group];
  return SpanParams{s, kernel::inverse_scale(s), levels, static_cast<int>(rounding),
                    static_cast<uint64_t>(seed), static_cast<uint64_t>(offset)};
}

template <class scalar_t>
void fake_quantize_typed(const at::Tensor& x, const at::Tensor& scale, kernel::Levels levels, int64_t rounding,
                         int64_t seed, int64_t offset, at::Tensor& dst) {
  const SpanKernels& k = active_span_kernels();
  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* op = dst.data_ptr<scalar_t>();
  const float* sp = scale.data_ptr<float>();
  const int64_t numel = x.numel();
  const int64_t inner = scale.numel() ? numel / scale.numel() : 1;
  const bool stream = std::is_same_v<scalar_t, float> && numel * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
  for_each_span(numel, inner, [&](int64_t begin, int64_t end, int64_t group) {
    SpanParams p = params_for(sp, group, levels, rounding, seed, offset);
    p.stream_out = stream;
    if (!kernel::valid_scale(p.scale)) {
      std::fill(op + begin, op + end, static_cast<scalar_t>(kernel::quiet_nan()));
      return;
    }
    on_float_chunks<scalar_t>(xp, begin, end, [&](const float* xs, int64_t at, int64_t n) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        k.fake_quantize(xs, op + at, n, at, p);
      } else {
        float res[kChunk];
        k.fake_quantize(xs, res, n, at, p);
        store_floats(res, op + at, n, active_converters());
      }
    });
  });
}

void fake_quantize_into_cpu(const at::Tensor& x_in, const at::Tensor& scale_in,
                            const std::optional<at::Tensor>& table, int64_t num_levels, int64_t rounding,
                            int64_t seed, int64_t offset, at::Tensor& out) {
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  at::Tensor dst = out.is_contiguous() ? out : at::empty_like(x);
  const kernel::Levels levels = levels_of(table, num_levels);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zipml_fake_quantize", [&] {
    fake_quantize_typed<scalar_t>(x, scale, levels, rounding, seed, offset, dst);
  });
  if (!dst.is_same(out)) out.copy_(dst);
}

at::Tensor quantize_codes_cpu(const at::Tensor& x_in, const at::Tensor& scale_in,
                              const std::optional<at::Tensor>& table, int64_t num_levels, int64_t rounding,
                              int64_t seed, int64_t offset) {
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  at::Tensor codes = at::empty(x.sizes(), x.options().dtype(at::kByte));
  const int64_t numel = x.numel();
  const int64_t inner = scale.numel() ? numel / scale.numel() : 1;
  const kernel::Levels levels = levels_of(table, num_levels);
  const SpanKernels& k = active_span_kernels();
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zipml_quantize", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    uint8_t* cp = codes.data_ptr<uint8_t>();
    const float* sp = scale.data_ptr<float>();
    for_each_span(numel, inner, [&](int64_t begin, int64_t end, int64_t group) {
      const SpanParams p = params_for(sp, group, levels, rounding, seed, offset);
      if (!kernel::valid_scale(p.scale)) {
        finite = false;
        return;
      }
      on_float_chunks<scalar_t>(xp, begin, end, [&](const float* xs, int64_t at, int64_t n) {
        if (!k.quantize(xs, cp + at, n, at, p)) finite = false;
      });
    });
  });
  TORCH_CHECK_VALUE(finite.load(), "quantize: x contains NaN or Inf (or the scale does), which codes cannot "
                    "represent; fake_quantize propagates them as NaN instead");
  return codes;
}

std::tuple<at::Tensor, at::Tensor> double_sample_codes_cpu(const at::Tensor& x_in, const at::Tensor& scale_in,
                                                           const std::optional<at::Tensor>& table,
                                                           int64_t num_levels, int64_t seed, int64_t offset) {
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  at::Tensor index = at::empty(x.sizes(), x.options().dtype(at::kByte));
  at::Tensor up = at::empty(x.sizes(), x.options().dtype(at::kByte));
  const int64_t numel = x.numel();
  const int64_t inner = scale.numel() ? numel / scale.numel() : 1;
  const kernel::Levels levels = levels_of(table, num_levels);
  const SpanKernels& k = active_span_kernels();
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zipml_double_sample", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    uint8_t* ip = index.data_ptr<uint8_t>();
    uint8_t* up_p = up.data_ptr<uint8_t>();
    const float* sp = scale.data_ptr<float>();
    for_each_span(numel, inner, [&](int64_t begin, int64_t end, int64_t group) {
      const SpanParams p = params_for(sp, group, levels, kernel::kStochastic, seed, offset);
      if (!kernel::valid_scale(p.scale)) {
        finite = false;
        return;
      }
      on_float_chunks<scalar_t>(xp, begin, end, [&](const float* xs, int64_t at, int64_t n) {
        if (!k.double_sample(xs, ip + at, up_p + at, n, at, p)) finite = false;
      });
    });
  });
  TORCH_CHECK_VALUE(finite.load(), "double_sample: x contains NaN or Inf (or the scale does), which codes "
                    "cannot represent");
  return {index, up};
}

// value = table[code + ((up >> up_bit) & 1)] * scale: dequantize (no up) and both double-sample decodes.
// A span long enough first tabulates its 257 possible outputs (codes + 1 clamped to the last level,
// so that a bad code reads a defined entry before the range check fails) in the output dtype.
at::Tensor dequantize_codes_cpu(const at::Tensor& codes_in, const std::optional<at::Tensor>& up_in,
                                int64_t up_bit, const at::Tensor& scale_in, const at::Tensor& table_in,
                                at::ScalarType dtype) {
  const at::Tensor codes = codes_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor table = table_in.contiguous();
  const at::Tensor up = up_in ? up_in->contiguous() : at::Tensor();
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(dtype));
  const int64_t numel = codes.numel();
  const int64_t inner = scale.numel() ? numel / scale.numel() : 1;
  const int64_t count = table.numel();
  constexpr int64_t kOutputs = 257;  // code + round-up bit
  std::atomic<bool> in_range{true};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "zipml_dequantize", [&] {
    const uint8_t* cp = codes.data_ptr<uint8_t>();
    const uint8_t* upp = up.defined() ? up.data_ptr<uint8_t>() : nullptr;
    const float* tp = table.data_ptr<float>();
    const float* sp = scale.data_ptr<float>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_each_span(numel, inner, [&](int64_t begin, int64_t end, int64_t group) {
      const float s = sp[group];
      const bool valid = kernel::valid_scale(s);
      auto value = [&](unsigned code) {
        return static_cast<scalar_t>(valid ? tp[std::min<int64_t>(code, count - 1)] * s : kernel::quiet_nan());
      };
      unsigned worst = 0;
      if (end - begin < 4 * kOutputs) {
        for (int64_t i = begin; i < end; ++i) {
          const unsigned code = cp[i] + (upp ? (upp[i] >> up_bit) & 1u : 0u);
          worst = std::max(worst, code);
          op[i] = value(code);
        }
      } else {
        scalar_t outputs[kOutputs];
        for (unsigned c = 0; c < kOutputs; ++c) outputs[c] = value(c);
        if (upp) {
          for (int64_t i = begin; i < end; ++i) {
            const unsigned code = cp[i] + ((upp[i] >> up_bit) & 1u);
            worst = std::max(worst, code);
            op[i] = outputs[code];
          }
        } else {
          for (int64_t i = begin; i < end; ++i) {
            worst = std::max<unsigned>(worst, cp[i]);
            op[i] = outputs[cp[i]];
          }
        }
      }
      if (worst >= count) in_range = false;
    });
  });
  TORCH_CHECK_VALUE(in_range.load(), "dequantize: a code is >= the number of levels (", count, ")");
  return out;
}

// ---- the max-abs scale ------------------------------------------------------------------------------

constexpr int64_t kMaxAbsPiece = int64_t{1} << 16;  // elements per piece reduced by one thread

// max |x| of each of `groups` runs of consecutive elements, as float32, in one read of x (amin and
// amax take two). Each run is cut into pieces reduced in parallel, then the pieces combined.
at::Tensor absmax_cpu(const at::Tensor& x_in, int64_t groups) {
  const at::Tensor x = x_in.contiguous();
  const int64_t numel = x.numel();
  TORCH_CHECK(groups >= 1 && numel % groups == 0, "_absmax: groups must be at least 1 and divide the ", numel,
              " elements of x, got ", groups);
  const int64_t inner = numel / groups;
  const int64_t per_group = std::max<int64_t>(1, (inner + kMaxAbsPiece - 1) / kMaxAbsPiece);
  std::vector<int32_t> partial(static_cast<size_t>(groups * per_group), 0);
  const int64_t grain = std::max<int64_t>(1, kMaxAbsPiece / std::max<int64_t>(inner, 1));  // pieces per task
  const SpanKernels& kernels = active_span_kernels();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zipml_absmax", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, groups * per_group, grain, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t group = p / per_group, piece = p % per_group;
        const int64_t begin = group * inner + piece * kMaxAbsPiece;
        const int64_t end = group * inner + std::min(inner, (piece + 1) * kMaxAbsPiece);
        int32_t m = 0;
        on_float_chunks<scalar_t>(xp, begin, end, [&](const float* xs, int64_t, int64_t n) {
          m = kernels.max_magnitude(xs, n, m);
        });
        partial[p] = m;
      }
    });
  });
  at::Tensor out = at::empty({groups}, x.options().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  for (int64_t g = 0; g < groups; ++g) {
    const int32_t m = *std::max_element(partial.begin() + g * per_group, partial.begin() + (g + 1) * per_group);
    std::memcpy(op + g, &m, sizeof(m));
  }
  return out;
}

// ---- statistics for the variance-optimal levels ----------------------------------------------------

constexpr int64_t kStage = 256;                       // values binned, then accumulated
constexpr int64_t kPieceElements = int64_t{1} << 16;  // elements per histogram piece
constexpr int64_t kMaxPieces = 64;
// Consecutive values go to kLanes interleaved sub-histograms, so that a run of values in one bin (the
// zeros of a ReLU, a constant tensor) makes kLanes independent chains of read-modify-writes rather
// than one whose every step waits for the previous store (a histogram of 2^20 values on one Zen 4
// thread: 1.4 ms instead of 4.0 for a constant, 1.3 instead of 2.1 for a ReLU'd Gaussian).
constexpr int kLanes = 4;

// The histogram of one piece of the tensor: per bin the count and the sum of v, and the extremes.
struct HistogramPiece {
  int64_t* count;
  double* sum;
  float lo = std::numeric_limits<float>::infinity();
  float hi = -std::numeric_limits<float>::infinity();
  bool finite = true;
};

// A thread's kLanes sub-histograms of `bins` bins each, lane after lane.
struct LaneHistograms {
  std::vector<int64_t> count;
  std::vector<double> sum;
  int64_t bins;
  explicit LaneHistograms(int64_t bins) : count(kLanes * bins), sum(kLanes * bins), bins(bins) {}

  void clear() {
    std::fill(count.begin(), count.end(), 0);
    std::fill(sum.begin(), sum.end(), 0.0);
  }
  // Value i of the stage goes to lane i % kLanes.
  void add(const float* v, const int32_t* bin, int64_t n) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
      for (int l = 0; l < kLanes; ++l) add_one(l, bin[i + l], v[i + l]);
    for (int l = 0; i < n; ++i, ++l) add_one(l, bin[i], v[i]);
  }
  void add_one(int lane, int32_t bin_index, float v) {
    const int64_t k = lane * bins + bin_index;
    count[k] += 1;
    sum[k] += static_cast<double>(v);
  }
  // The lanes added in lane order.
  void store(HistogramPiece& piece) const {
    for (int64_t j = 0; j < bins; ++j) {
      int64_t c = 0;
      double s = 0.0;
      for (int l = 0; l < kLanes; ++l) {
        c += count[l * bins + j];
        s += sum[l * bins + j];
      }
      piece.count[j] = c;
      piece.sum[j] = s;
    }
  }
};

// v = normalize(x) of n <= kStage values, their bins min((v + 1) * bins/2, bins - 1), and the extremes
// of v. SSE2 (every x86-64) four at a time where the build has it; the same float operations either
// way (max and min return their second operand on NaN, as kernel::normalize's ternaries do).
void bin_values(const float* x, int64_t n, float inv, float half_bins, int32_t last, float* v, int32_t* bin,
                HistogramPiece& piece) {
  const kernel::Levels unit{nullptr, 2};
  int64_t i = 0;
#if defined(__SSE2__)
  const __m128 inv4 = _mm_set1_ps(inv), one = _mm_set1_ps(1.0f), minus_one = _mm_set1_ps(-1.0f),
               half4 = _mm_set1_ps(half_bins), last4 = _mm_set1_ps(static_cast<float>(last)),
               big = _mm_set1_ps(std::numeric_limits<float>::max()), sign = _mm_set1_ps(-0.0f);
  __m128 lo = _mm_set1_ps(piece.lo), hi = _mm_set1_ps(piece.hi), bad = _mm_setzero_ps();
  for (; i + 4 <= n; i += 4) {
    const __m128 xv = _mm_loadu_ps(x + i);
    bad = _mm_or_ps(bad, _mm_cmpnle_ps(_mm_andnot_ps(sign, xv), big));  // !(|x| <= FLT_MAX)
    const __m128 vv = _mm_min_ps(_mm_max_ps(_mm_mul_ps(xv, inv4), minus_one), one);
    lo = _mm_min_ps(vv, lo);
    hi = _mm_max_ps(vv, hi);
    _mm_storeu_ps(v + i, vv);
    // min(int(t), last) == int(min(t, last)) for 0 <= t <= bins
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bin + i),
                     _mm_cvttps_epi32(_mm_min_ps(_mm_mul_ps(_mm_add_ps(vv, one), half4), last4)));
  }
  alignas(16) float los[4], his[4];
  _mm_store_ps(los, lo);
  _mm_store_ps(his, hi);
  for (int k = 0; k < 4; ++k) {
    piece.lo = std::min(piece.lo, los[k]);
    piece.hi = std::max(piece.hi, his[k]);
  }
  piece.finite &= _mm_movemask_ps(bad) == 0;
#endif
  for (; i < n; ++i) {
    piece.finite &= kernel::is_finite(x[i]);
    v[i] = kernel::normalize(x[i], inv, unit);
    piece.lo = std::min(piece.lo, v[i]);
    piece.hi = std::max(piece.hi, v[i]);
    bin[i] = std::min(static_cast<int32_t>((v[i] + 1.0f) * half_bins), last);
  }
}

// Statistics of v = clamp(x / scale, -1, 1) for the variance-optimal levels: per bin of `bins`
// equal bins over [-1, 1] the count and the sum of the values in it (float64), and the minimum and
// maximum value. The tensor is cut into pieces by its size alone, each summed in a fixed order into
// its own histogram, and the pieces added in order: the float64 sums, and so the levels chosen from
// them, do not depend on the thread count.
std::tuple<at::Tensor, at::Tensor> level_histogram_cpu(const at::Tensor& x_in, const at::Tensor& scale_in,
                                                       int64_t bins) {
  TORCH_CHECK(bins >= 1 && bins <= (int64_t{1} << 30), "_level_histogram: bins must be from 1 to 2^30, got ", bins);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const int64_t numel = x.numel();
  const int64_t inner = scale.numel() ? numel / scale.numel() : 1;
  const int64_t pieces = std::clamp<int64_t>(numel / kPieceElements, 1, kMaxPieces);
  std::vector<int64_t> counts(static_cast<size_t>(pieces * bins), 0);
  std::vector<double> sums(static_cast<size_t>(pieces * bins), 0.0);
  std::vector<HistogramPiece> parts(pieces);
  for (int64_t p = 0; p < pieces; ++p) {
    parts[p].count = counts.data() + p * bins;
    parts[p].sum = sums.data() + p * bins;
  }
  const float half_bins = 0.5f * static_cast<float>(bins);
  const int32_t last = static_cast<int32_t>(bins - 1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zipml_level_histogram", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const float* sp = scale.data_ptr<float>();
    at::parallel_for(0, pieces, 1, [&](int64_t p0, int64_t p1) {
      float v[kStage];
      int32_t bin[kStage];
      LaneHistograms lanes(bins);
      for (int64_t p = p0; p < p1; ++p) {
        HistogramPiece& piece = parts[p];
        if (p > p0) lanes.clear();
        const int64_t end = (p + 1) * numel / pieces;
        for (int64_t begin = p * numel / pieces; begin < end;) {
          const int64_t group = begin / inner;
          const int64_t stop = std::min(end, (group + 1) * inner);
          const float s = sp[group];
          const float inv = kernel::inverse_scale(s);
          piece.finite &= kernel::valid_scale(s);
          on_float_chunks<scalar_t>(xp, begin, stop, [&](const float* xs, int64_t, int64_t n) {
            for (int64_t b = 0; b < n; b += kStage) {
              const int64_t m = std::min(kStage, n - b);
              bin_values(xs + b, m, inv, half_bins, last, v, bin, piece);
              lanes.add(v, bin, m);
            }
          });
          begin = stop;
        }
        lanes.store(piece);
      }
    });
  });
  bool finite = true;
  for (const HistogramPiece& piece : parts) finite &= piece.finite;
  TORCH_CHECK_VALUE(finite, "optimal_levels: x contains NaN or Inf (or the scale does)");
  at::Tensor stats = at::empty({bins, 2}, at::kDouble);
  double* st = stats.data_ptr<double>();
  for (int64_t j = 0; j < bins; ++j) {
    int64_t c = 0;
    double s = 0.0;
    for (int64_t p = 0; p < pieces; ++p) {
      c += parts[p].count[j];
      s += parts[p].sum[j];
    }
    st[2 * j] = static_cast<double>(c);
    st[2 * j + 1] = s;
  }
  float lo = parts[0].lo, hi = parts[0].hi;
  for (const HistogramPiece& piece : parts) {
    lo = std::min(lo, piece.lo);
    hi = std::max(hi, piece.hi);
  }
  at::Tensor range = at::empty({2}, at::kFloat);
  range[0] = lo;
  range[1] = hi;
  return {stats, range};
}

// ---- bit packing (layout in kernels/common/pack.h) ---------------------------------------------------

// Eight codes fill exactly kBits bytes: whole groups are packed and unpacked through a 64-bit word
// (little-endian bit order, as pack_byte), the bytes after the last whole group byte by byte.
constexpr int64_t kGroup = 8;

template <int kBits>
unsigned pack_groups(const uint8_t* codes, uint8_t* packed, int64_t g0, int64_t g1) {
  unsigned seen = 0;
  for (int64_t g = g0; g < g1; ++g) {
    uint64_t word = 0;
    for (int k = 0; k < kGroup; ++k) {
      const unsigned code = codes[g * kGroup + k];
      seen |= code;
      word |= static_cast<uint64_t>(code) << (k * kBits);
    }
    for (int b = 0; b < kBits; ++b) packed[g * kBits + b] = static_cast<uint8_t>(word >> (8 * b));
  }
  return seen;
}

template <int kBits>
void unpack_groups(const uint8_t* packed, uint8_t* codes, int64_t g0, int64_t g1) {
  constexpr uint64_t kMask = (uint64_t{1} << kBits) - 1;
  if constexpr (kBits == 8) {
    std::memcpy(codes + g0 * kGroup, packed + g0 * kGroup, (g1 - g0) * kGroup);
    return;
  } else if constexpr (kBits == 4) {  // vectorizes
    for (int64_t byte = g0 * kBits; byte < g1 * kBits; ++byte) {
      codes[2 * byte] = packed[byte] & 15;
      codes[2 * byte + 1] = packed[byte] >> 4;
    }
    return;
  } else if constexpr (kBits <= 2) {  // the codes of every byte value, tabulated
    constexpr int kPerByte = 8 / kBits;
    static const auto spread = [] {
      std::array<std::array<uint8_t, kPerByte>, 256> t{};
      for (int byte = 0; byte < 256; ++byte)
        for (int k = 0; k < kPerByte; ++k) t[byte][k] = static_cast<uint8_t>((byte >> (k * kBits)) & kMask);
      return t;
    }();
    for (int64_t byte = g0 * kBits; byte < g1 * kBits; ++byte)
      std::memcpy(codes + byte * kPerByte, spread[packed[byte]].data(), kPerByte);
    return;
  }
  for (int64_t g = g0; g < g1; ++g) {
    uint64_t word = 0;
    for (int b = 0; b < kBits; ++b) word |= static_cast<uint64_t>(packed[g * kBits + b]) << (8 * b);
    for (int k = 0; k < kGroup; ++k) codes[g * kGroup + k] = static_cast<uint8_t>((word >> (k * kBits)) & kMask);
  }
}

// f.template operator()<bits>() for bits in 1..8.
template <class F>
auto with_bits(int64_t bits, F&& f) {
  switch (bits) {
    case 1: return f(std::integral_constant<int, 1>());
    case 2: return f(std::integral_constant<int, 2>());
    case 3: return f(std::integral_constant<int, 3>());
    case 4: return f(std::integral_constant<int, 4>());
    case 5: return f(std::integral_constant<int, 5>());
    case 6: return f(std::integral_constant<int, 6>());
    case 7: return f(std::integral_constant<int, 7>());
    default: return f(std::integral_constant<int, 8>());
  }
}

at::Tensor pack_cpu(const at::Tensor& codes_in, int64_t bits) {
  const at::Tensor codes = codes_in.contiguous();
  const int64_t numel = codes.numel();
  const int64_t nbytes = kernel::packed_bytes(numel, static_cast<int>(bits));
  at::Tensor packed = at::empty({nbytes}, codes.options());
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  uint8_t* pp = packed.data_ptr<uint8_t>();
  const int64_t groups = numel / kGroup;
  std::atomic<bool> in_range{true};
  with_bits(bits, [&](auto b) {
    at::parallel_for(0, groups, 1 << 13, [&](int64_t g0, int64_t g1) {
      if (pack_groups<decltype(b)::value>(cp, pp, g0, g1) >> bits) in_range = false;
    });
  });
  unsigned seen = 0;
  for (int64_t i = groups * kGroup; i < numel; ++i) seen |= cp[i];
  for (int64_t byte = groups * bits; byte < nbytes; ++byte)
    pp[byte] = kernel::pack_byte(cp, numel, static_cast<int>(bits), byte);
  TORCH_CHECK_VALUE(in_range.load() && !(seen >> bits), "pack: a code does not fit in bits=", bits,
                    " (codes must be < ", 1 << bits, ")");
  return packed;
}

at::Tensor unpack_cpu(const at::Tensor& packed_in, int64_t bits, int64_t numel) {
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor codes = at::empty({numel}, packed.options());
  const uint8_t* pp = packed.data_ptr<uint8_t>();
  uint8_t* cp = codes.data_ptr<uint8_t>();
  const int64_t groups = numel / kGroup;
  with_bits(bits, [&](auto b) {
    at::parallel_for(0, groups, 1 << 13, [&](int64_t g0, int64_t g1) {
      unpack_groups<decltype(b)::value>(pp, cp, g0, g1);
    });
  });
  for (int64_t i = groups * kGroup; i < numel; ++i) cp[i] = kernel::unpack_code(pp, static_cast<int>(bits), i);
  return codes;
}

}  // namespace

TORCH_LIBRARY_IMPL(zipml, CPU, m) {
  m.impl("_fake_quantize_into", &fake_quantize_into_cpu);
  m.impl("_quantize_codes", &quantize_codes_cpu);
  m.impl("_double_sample_codes", &double_sample_codes_cpu);
  m.impl("_dequantize_codes", &dequantize_codes_cpu);
  m.impl("_level_histogram", &level_histogram_cpu);
  m.impl("_absmax", &absmax_cpu);
  m.impl("_pack", &pack_cpu);
  m.impl("_unpack", &unpack_cpu);
}

}  // namespace zipml::cpu

namespace zipml::cpu {
namespace {

// Which span kernels run: "" reports, a name (scalar, avx2, avx512, auto) selects. For tests and
// benchmarks that compare the instruction-set variants in one process.
std::string cpu_isa(c10::string_view isa) {
  if (!isa.empty()) set_span_isa(isa == "auto" ? "" : std::string(isa).c_str());
  return active_span_kernels().name;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(zipml, m) { m.def("_cpu_isa(str isa=\"\") -> str", &cpu_isa); }

}  // namespace zipml::cpu
