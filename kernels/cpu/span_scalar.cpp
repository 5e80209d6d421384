// Scalar span kernels: the portable fallback, and the reference the SIMD variants reproduce.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include <c10/util/Exception.h>

#include "span.h"

namespace zipml::cpu {
namespace {

using kernel::philox_block;

// Calls f(i, draw) for the n elements starting at stream index `first` of stream (seed, offset),
// one Philox call per eight.
template <class F>
inline void for_each_draw(int64_t n, uint64_t first, uint64_t seed, uint64_t offset, F&& f) {
  int64_t i = 0;
  while (i < n) {
    const uint64_t index = first + i;
    const kernel::Philox4 block = philox_block(seed, offset, index >> 3);
    for (unsigned k = index & 7; k < 8 && i < n; ++k, ++i)
      f(i, kernel::ElementDraw{kernel::block_draw(block, k), seed, offset, first + i});
  }
}

void fake_quantize_scalar(const float* x, float* out, int64_t n, uint64_t first, const SpanParams& p) {
  for_each_draw(n, first, p.seed, p.offset, [&](int64_t i, const kernel::ElementDraw& d) {
    out[i] = kernel::fake_quantize_value(x[i], p.scale, p.inv_scale, p.levels, p.rounding, d);
  });
}

bool quantize_scalar(const float* x, uint8_t* codes, int64_t n, uint64_t first, const SpanParams& p) {
  bool finite = true;
  for_each_draw(n, first, p.seed, p.offset, [&](int64_t i, const kernel::ElementDraw& d) {
    finite &= kernel::is_finite(x[i]);
    codes[i] = static_cast<uint8_t>(kernel::quantize_code(x[i], p.inv_scale, p.levels, p.rounding, d));
  });
  return finite;
}

bool double_sample_scalar(const float* x, uint8_t* index, uint8_t* up, int64_t n, uint64_t first,
                          const SpanParams& p) {
  bool finite = true;
  int64_t i = 0;
  while (i < n) {
    const uint64_t at = first + i;
    const kernel::Philox4 b1 = philox_block(p.seed, p.offset, at >> 3);
    const kernel::Philox4 b2 = philox_block(p.seed, p.offset + 1, at >> 3);
    for (unsigned k = at & 7; k < 8 && i < n; ++k, ++i) {
      const kernel::ElementDraw d1{kernel::block_draw(b1, k), p.seed, p.offset, first + i};
      const kernel::ElementDraw d2{kernel::block_draw(b2, k), p.seed, p.offset + 1, first + i};
      finite &= kernel::is_finite(x[i]);
      const kernel::Interval iv = kernel::locate(kernel::normalize(x[i], p.inv_scale, p.levels), p.levels);
      index[i] = static_cast<uint8_t>(iv.index);
      up[i] = static_cast<uint8_t>(kernel::round_up(iv.frac, kernel::kStochastic, d1) |
                                   kernel::round_up(iv.frac, kernel::kStochastic, d2) << 1);
    }
  }
  return finite;
}

int32_t max_magnitude_scalar(const float* x, int64_t n, int32_t m) {
  for (int64_t i = 0; i < n; ++i) m = std::max(m, kernel::magnitude_bits(x[i]));
  return m;
}

const SpanKernels kScalar{"scalar", fake_quantize_scalar, quantize_scalar, double_sample_scalar, max_magnitude_scalar};

const SpanKernels& choose(const std::string& want) {
  if (want == "scalar") return kScalar;
  if (want == "avx2" || want == "avx512") {
    const SpanKernels* k = want == "avx2" ? avx2_span_kernels() : avx512_span_kernels();
    TORCH_CHECK(k != nullptr, "CPU instruction set '", want, "': this processor or build lacks it");
    return *k;
  }
  TORCH_CHECK(want.empty(), "CPU instruction set (ZIPML_CPU_ISA) must be scalar, avx2 or avx512, got '",
              want, "'");
  if (const SpanKernels* k = avx512_span_kernels()) return *k;
  if (const SpanKernels* k = avx2_span_kernels()) return *k;
  return kScalar;
}

std::atomic<const SpanKernels*>& active() {
  static std::atomic<const SpanKernels*> chosen{nullptr};
  return chosen;
}

}  // namespace

const SpanKernels& scalar_span_kernels() { return kScalar; }

const SpanKernels& active_span_kernels() {
  const SpanKernels* k = active().load(std::memory_order_acquire);
  if (k == nullptr) {
    const char* forced = std::getenv("ZIPML_CPU_ISA");
    k = &choose(forced ? forced : "");
    active().store(k, std::memory_order_release);
  }
  return *k;
}

void set_span_isa(const char* name) { active().store(&choose(name), std::memory_order_release); }

}  // namespace zipml::cpu
