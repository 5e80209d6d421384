// The portable variant of linear/kernels.h, the reference the SIMD variants reproduce, and the
// run-time choice between them.
#include <atomic>
#include <cstdlib>

#include "../kernels/common/pack.h"
#include "../kernels/common/philox.h"
#include "../kernels/common/quantize.h"
#include "dataset.h"
#include "kernels.h"

namespace zipml::linear {
namespace scalar {

#define ZIPML_VECTOR_BYTES 16

#include "kernels_float_impl.h"

inline int code_at(const uint8_t* index, const uint8_t* up, int index_bits, int64_t j) {
  const int interval = index_bits == 0 ? 0 : kernel::unpack_code(index, index_bits, j);
  return interval + ((up[j >> 3] >> (j & 7)) & 1);
}

int64_t int_dot(const uint8_t* index, const uint8_t* up, const int8_t* m, int64_t c0, int64_t c1, int bits) {
  const int ib = kernel::interval_bits(1 << bits);
  int64_t sum = 0;
  for (int64_t j = c0; j < c1; ++j) sum += static_cast<int64_t>(code_at(index, up, ib, j)) * m[j];
  return sum;
}

void int_gemv_t(const uint8_t* const* index, const uint8_t* const* up, const int8_t* t, int64_t nrows, int64_t c0,
                int64_t c1, int bits, int32_t* G) {
  const int ib = kernel::interval_bits(1 << bits);
  for (int64_t j = c0; j < c1; ++j) {
    int32_t sum = 0;
    for (int64_t k = 0; k < nrows; ++k) sum += code_at(index[k], up[k], ib, j) * t[k];
    G[j - c0] = sum;
  }
}

}  // namespace scalar

void decode_uniform_scalar(const uint8_t* index, const uint8_t* up, int64_t c0, int64_t c1, int bits, float* out) {
  const kernel::Levels grid{nullptr, 1 << bits};
  const int ib = kernel::interval_bits(grid.count);
  for (int64_t j = c0; j < c1; ++j) out[j - c0] = grid.at(scalar::code_at(index, up, ib, j));
}

// One Philox call holds the draws of the eight elements of block index / 8.
void philox_draws_scalar(uint64_t seed, uint64_t offset, uint64_t first, int64_t n, uint16_t* out) {
  int64_t i = 0;
  while (i < n) {
    const uint64_t index = first + i;
    const kernel::Philox4 block = kernel::philox_block(seed, offset, index >> 3);
    for (unsigned e = index & 7; e < 8 && i < n; ++e, ++i)
      out[i] = static_cast<uint16_t>(kernel::block_draw(block, e));
  }
}

int64_t quantize_symmetric_scalar(const float* v, int64_t begin, int64_t end, float scale, int bits, uint64_t seed,
                                  uint64_t offset, float* out_f, int8_t* out_i) {
  const kernel::Levels grid = symmetric_grid(bits);
  const float inv = kernel::inverse_scale(scale);
  const int half = symmetric_half(bits);
  int64_t sum = 0;
  int64_t j = begin;
  while (j < end) {
    const kernel::Philox4 block = kernel::philox_block(seed, offset, static_cast<uint64_t>(j) >> 3);
    for (unsigned e = j & 7; e < 8 && j < end; ++e, ++j) {
      const kernel::ElementDraw d{kernel::block_draw(block, e), seed, offset, static_cast<uint64_t>(j)};
      const int code = kernel::quantize_code(v[j], inv, grid, kernel::kStochastic, d);
      if (out_f) out_f[j] = grid.at(code) * scale;
      if (out_i) out_i[j] = static_cast<int8_t>(code - half);
      sum += code - half;
    }
  }
  return sum;
}

namespace scalar {

const Kernels kKernels{"scalar",
                       dot_impl,
                       gemv_t_impl,
                       int_dot,
                       int_gemv_t,
                       quantize_symmetric_scalar,
                       max_abs_impl,
                       decode_uniform_scalar,
                       philox_draws_scalar};

}  // namespace scalar

namespace {

const Kernels& choose(const std::string& want) {
  if (want == "scalar") return scalar::kKernels;
  if (want == "avx2" || want == "avx512") {
    const Kernels* k = want == "avx2" ? avx2_kernels() : avx512_kernels();
    if (k == nullptr) throw InputError("instruction set '" + want + "': this processor or build lacks it");
    return *k;
  }
  if (!want.empty()) throw InputError("isa (ZIPML_LINEAR_ISA) must be scalar, avx2 or avx512, got '" + want + "'");
  if (const Kernels* k = avx512_kernels()) return *k;
  if (const Kernels* k = avx2_kernels()) return *k;
  return scalar::kKernels;
}

std::atomic<const Kernels*>& active() {
  static std::atomic<const Kernels*> chosen{nullptr};
  return chosen;
}

}  // namespace

const Kernels& scalar_kernels() { return scalar::kKernels; }

const Kernels& active_kernels() {
  const Kernels* k = active().load(std::memory_order_acquire);
  if (k == nullptr) {
    const char* forced = std::getenv("ZIPML_LINEAR_ISA");
    k = &choose(forced ? forced : "");
    active().store(k, std::memory_order_release);
  }
  return *k;
}

void set_isa(const std::string& name) { active().store(&choose(name), std::memory_order_release); }

std::vector<std::string> available_isas() {
  std::vector<std::string> names{"scalar"};
  if (avx2_kernels()) names.push_back("avx2");
  if (avx512_kernels()) names.push_back("avx512");
  return names;
}

}  // namespace zipml::linear
