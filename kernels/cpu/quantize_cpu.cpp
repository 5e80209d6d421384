// CPU kernels of the zipml operators: parallel drivers over the span kernels of span.h, with
// float16/bfloat16/float64 converted to float32 in cache-sized chunks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <type_traits>

#include "../common/pack.h"
#include "span.h"

namespace zipml::cpu {
namespace {

constexpr int64_t kBlock = 4096;  // elements per scheduling unit; a multiple of every SIMD width
constexpr int64_t kChunk = 1024;  // elements converted at a time for non-float32 dtypes

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

// Runs a float32 span kernel on elements [begin, end) of a tensor of dtype scalar_t, converting
// through stack buffers unless scalar_t is float.
template <class scalar_t, class Kernel>
void on_float_chunks(const scalar_t* x, int64_t begin, int64_t end, Kernel&& kernel) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    kernel(x + begin, begin, end - begin);
  } else {
    float buf[kChunk];
    for (int64_t b = begin; b < end; b += kChunk) {
      const int64_t n = std::min(kChunk, end - b);
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(x[b + i]);
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
  for_each_span(numel, inner, [&](int64_t begin, int64_t end, int64_t group) {
    const SpanParams p = params_for(sp, group, levels, rounding, seed, offset);
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
        for (int64_t i = 0; i < n; ++i) op[at + i] = static_cast<scalar_t>(res[i]);
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
      unsigned worst = 0;
      for (int64_t i = begin; i < end; ++i) {
        const unsigned code = cp[i] + (upp ? (upp[i] >> up_bit) & 1u : 0u);
        worst = std::max(worst, code);
        op[i] = static_cast<scalar_t>(valid ? tp[std::min<int64_t>(code, count - 1)] * s : kernel::quiet_nan());
      }
      if (worst >= count) in_range = false;
    });
  });
  TORCH_CHECK_VALUE(in_range.load(), "dequantize: a code is >= the number of levels (", count, ")");
  return out;
}

// Statistics of v = clamp(x / scale, -1, 1) for the variance-optimal levels: per bin of `bins`
// equal bins over [-1, 1] the count, sum and sum of squares of the values in it (float64), and the
// minimum and maximum value.
std::tuple<at::Tensor, at::Tensor> level_histogram_cpu(const at::Tensor& x_in, const at::Tensor& scale_in,
                                                       int64_t bins) {
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const int64_t numel = x.numel();
  const int64_t inner = scale.numel() ? numel / scale.numel() : 1;
  const int threads = at::get_num_threads();
  std::vector<double> partial(static_cast<size_t>(threads) * bins * 3, 0.0);
  std::vector<float> lo(threads, std::numeric_limits<float>::infinity());
  std::vector<float> hi(threads, -std::numeric_limits<float>::infinity());
  std::atomic<bool> finite{true};
  const kernel::Levels unit{nullptr, 2};
  const float half_bins = 0.5f * static_cast<float>(bins);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zipml_level_histogram", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const float* sp = scale.data_ptr<float>();
    for_each_span(numel, inner, [&](int64_t begin, int64_t end, int64_t group) {
      const int t = at::get_thread_num();
      double* h = partial.data() + static_cast<size_t>(t) * bins * 3;
      const float s = sp[group];
      const float inv = kernel::inverse_scale(s);
      bool ok = kernel::valid_scale(s);
      float mn = lo[t], mx = hi[t];
      for (int64_t i = begin; i < end; ++i) {
        const float xv = static_cast<float>(xp[i]);
        ok &= kernel::is_finite(xv);
        const float v = kernel::normalize(xv, inv, unit);
        mn = std::min(mn, v);
        mx = std::max(mx, v);
        const int64_t b = std::min<int64_t>(static_cast<int64_t>((v + 1.0f) * half_bins), bins - 1);
        h[3 * b] += 1.0;
        h[3 * b + 1] += v;
        h[3 * b + 2] += static_cast<double>(v) * v;
      }
      lo[t] = mn;
      hi[t] = mx;
      if (!ok) finite = false;
    });
  });
  TORCH_CHECK_VALUE(finite.load(), "optimal_levels: x contains NaN or Inf (or the scale does)");
  at::Tensor stats = at::zeros({bins, 3}, at::kDouble);
  double* st = stats.data_ptr<double>();
  for (int t = 0; t < threads; ++t)
    for (int64_t j = 0; j < bins * 3; ++j) st[j] += partial[static_cast<size_t>(t) * bins * 3 + j];
  at::Tensor range = at::empty({2}, at::kFloat);
  range[0] = *std::min_element(lo.begin(), lo.end());
  range[1] = *std::max_element(hi.begin(), hi.end());
  return {stats, range};
}

at::Tensor pack_cpu(const at::Tensor& codes_in, int64_t bits) {
  const at::Tensor codes = codes_in.contiguous();
  const int64_t numel = codes.numel();
  const int64_t nbytes = kernel::packed_bytes(numel, static_cast<int>(bits));
  at::Tensor packed = at::empty({nbytes}, codes.options());
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  uint8_t* pp = packed.data_ptr<uint8_t>();
  std::atomic<bool> in_range{true};
  at::parallel_for(0, nbytes, 1 << 14, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) pp[b] = kernel::pack_byte(cp, numel, static_cast<int>(bits), b);
    // Every code that touches these bytes must fit in `bits`; check the ones starting here.
    unsigned seen = 0;
    for (int64_t i = (b0 * 8 + bits - 1) / bits; i < std::min(numel, (b1 * 8 + bits - 1) / bits); ++i) seen |= cp[i];
    if (seen >> bits) in_range = false;
  });
  TORCH_CHECK_VALUE(in_range.load(), "pack: a code does not fit in bits=", bits, " (codes must be < ", 1 << bits, ")");
  return packed;
}

at::Tensor unpack_cpu(const at::Tensor& packed_in, int64_t bits, int64_t numel) {
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor codes = at::empty({numel}, packed.options());
  const uint8_t* pp = packed.data_ptr<uint8_t>();
  uint8_t* cp = codes.data_ptr<uint8_t>();
  at::parallel_for(0, numel, 1 << 15, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) cp[i] = kernel::unpack_code(pp, static_cast<int>(bits), i);
  });
  return codes;
}

}  // namespace

TORCH_LIBRARY_IMPL(zipml, CPU, m) {
  m.impl("_fake_quantize_into", &fake_quantize_into_cpu);
  m.impl("_quantize_codes", &quantize_codes_cpu);
  m.impl("_double_sample_codes", &double_sample_codes_cpu);
  m.impl("_dequantize_codes", &dequantize_codes_cpu);
  m.impl("_level_histogram", &level_histogram_cpu);
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
