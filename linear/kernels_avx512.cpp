// AVX-512 (F, BW, VL, VNNI, VBMI) variant of linear/kernels.h.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "../kernels/common/quantize.h"
#include "kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx2,bmi2,popcnt")

namespace zipml::linear {
namespace avx512 {

#include "kernels_float_impl.h"

}  // namespace avx512
}  // namespace zipml::linear

#pragma GCC pop_options

namespace zipml::linear {

const Kernels* avx512_kernels() {
  static const Kernels k{"avx512", avx512::dot_impl, avx512::gemv_t_impl, scalar_kernels().int_dot,
                         scalar_kernels().int_gemv_t};
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
                         __builtin_cpu_supports("avx512vbmi");
  return ok ? &k : nullptr;
}

}  // namespace zipml::linear
