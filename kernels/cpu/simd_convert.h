// float16 / bfloat16 <-> float32 conversions for the CPU drivers' chunks of non-float32 tensors,
// vectorized (span_avx2.cpp) and giving the bits of c10's scalar conversions: float16 through F16C
// (IEEE round to nearest even: what c10 itself runs when built with -mf16c), bfloat16 by c10's
// integer rounding. Identical for every value but NaN payloads, which only ever meet the kernels as
// inputs (non-finite, whatever the payload) or as the quiet NaN 0x7FC00000 they write, converted
// alike by both.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace zipml::cpu {

struct FloatConverters {
  void (*from_half)(const c10::Half* src, float* dst, int64_t n);
  void (*to_half)(const float* src, c10::Half* dst, int64_t n);
  void (*from_bfloat16)(const c10::BFloat16* src, float* dst, int64_t n);
  void (*to_bfloat16)(const float* src, c10::BFloat16* dst, int64_t n);
};

// nullptr when the build or the processor lacks AVX2 and F16C.
const FloatConverters* avx2_float_converters();

}  // namespace zipml::cpu
