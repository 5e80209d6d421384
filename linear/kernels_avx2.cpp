// AVX2 variant of linear/kernels.h.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "../kernels/common/quantize.h"
#include "kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,bmi2,popcnt")

namespace zipml::linear {
namespace avx2 {

#include "kernels_float_impl.h"

}  // namespace avx2
}  // namespace zipml::linear

#pragma GCC pop_options

namespace zipml::linear {

const Kernels* avx2_kernels() {
  static const Kernels k{"avx2", avx2::dot_impl, avx2::gemv_t_impl, scalar_kernels().int_dot,
                         scalar_kernels().int_gemv_t};
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2");
  return ok ? &k : nullptr;
}

}  // namespace zipml::linear
