// AVX-512 span kernels (F, BW, DQ, VL): the generic kernels of simd_span.h over the instruction-set
// layer of simd_avx512.h.
//
// Compiled with the flags of every other file: the target pragma below, not a command-line -m flag,
// enables AVX-512 for this file's functions alone, and avx512_span_kernels() offers them only when
// the processor has the instructions.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
// GCC 12's AVX-512 headers trip these warnings on their own _mm512_undefined_* (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "span.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ZIPML_HAVE_AVX512 1

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl")
#endif

#include "simd_avx512.h"
#include "simd_span.h"

namespace zipml::cpu {
namespace {
void fake_quantize_avx512(const float* x, float* out, int64_t n, uint64_t first, const SpanParams& p) {
  fake_quantize_span<Avx512>(x, out, n, first, p);
}
bool quantize_avx512(const float* x, uint8_t* codes, int64_t n, uint64_t first, const SpanParams& p) {
  return quantize_span<Avx512>(x, codes, n, first, p);
}
bool double_sample_avx512(const float* x, uint8_t* index, uint8_t* up, int64_t n, uint64_t first,
                          const SpanParams& p) {
  return double_sample_span<Avx512>(x, index, up, n, first, p);
}
}  // namespace
}  // namespace zipml::cpu

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // x86-64 with GCC or clang

namespace zipml::cpu {

const SpanKernels* avx512_span_kernels() {
#ifdef ZIPML_HAVE_AVX512
  // The max-abs reduction is memory-bound, and AVX2's loop of 256-bit loads ran faster than the same
  // loop over 512-bit ones on Zen 4 (2^26 floats, 2 threads: medians 7.4-10.3 ms against 8.7-11.9).
  static const SpanKernels kernels{"avx512", fake_quantize_avx512, quantize_avx512, double_sample_avx512, [] {
                                     const SpanKernels* avx2 = avx2_span_kernels();
                                     return avx2 ? avx2->max_magnitude : scalar_span_kernels().max_magnitude;
                                   }()};
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  }();
  return supported ? &kernels : nullptr;
#else
  return nullptr;
#endif
}

}  // namespace zipml::cpu
