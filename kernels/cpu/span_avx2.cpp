// AVX2 span kernels: 8 lanes, 8 Philox counters per register, codebooks of up to 16 levels in
// registers. The generic kernels of simd_span.h over the operations below. Also the float16 and
// bfloat16 conversions of simd_convert.h.
//
// Compiled with the flags of every other file: the target pragma below, not a command-line -m flag,
// enables AVX2 and F16C for this file's functions alone (FMA stays off: the kernels must not fuse),
// and avx2_span_kernels() offers them only when the processor has the instructions.
#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "simd_convert.h"
#include "span.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ZIPML_HAVE_AVX2 1

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#endif

namespace zipml::cpu {
namespace {

struct Avx2 {
  static constexpr int kLanes = 8;
  static constexpr int kTableMax = 16;
  // Philox lane 4q + r computes block 2r + q of the 8: see transpose.
  static constexpr uint32_t kLaneBlock[8] = {0, 2, 4, 6, 1, 3, 5, 7};

  using F = __m256;
  using I = __m256i;
  using M = __m256;  // all-ones lanes where true
  struct Table {  // 16 floats
    F low, high;
  };

  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void stream(float* p, F v) { _mm256_stream_ps(p, v); }  // p aligned to the vector
  static void stream_fence() { _mm_sfence(); }
  static I loadi(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static I set1i(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }

  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }  // a > b ? a : b
  static F min(F a, F b) { return _mm256_min_ps(a, b); }  // a < b ? a : b
  static M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static M le(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  static M ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  // !(|x| <= FLT_MAX), as kernel::is_finite: NaN compares unordered.
  static M not_finite(F x) {
    const F magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
    return _mm256_cmp_ps(magnitude, _mm256_set1_ps(FLT_MAX), _CMP_NLE_UQ);
  }
  static F select(M m, F a, F b) { return _mm256_blendv_ps(b, a, m); }

  static I cvtt(F a) { return _mm256_cvttps_epi32(a); }
  static F fraction(F a) { return _mm256_sub_ps(a, _mm256_floor_ps(a)); }  // exact
  static F cvt(I a) { return _mm256_cvtepi32_ps(a); }
  static I addi(I a, I b) { return _mm256_add_epi32(a, b); }
  static I subi(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I mini(I a, I b) { return _mm256_min_epi32(a, b); }
  static I ori(I a, I b) { return _mm256_or_si256(a, b); }
  static I andi(I a, I b) { return _mm256_and_si256(a, b); }
  static I maxi(I a, I b) { return _mm256_max_epi32(a, b); }
  static I bits(F a) { return _mm256_castps_si256(a); }
  static void storei(uint32_t* p, I v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static I srli16(I a) { return _mm256_srli_epi32(a, 16); }
  static M lti(I a, I b) { return _mm256_castsi256_ps(_mm256_cmpgt_epi32(b, a)); }
  static M eqi(I a, I b) { return _mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b)); }
  static M low16_zero(I a) {
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(a, set1i(0xFFFF)), _mm256_setzero_si256()));
  }
  static I cvt_ceil(F a) { return _mm256_cvttps_epi32(_mm256_ceil_ps(a)); }
  static I inc_where(I a, M m) { return _mm256_sub_epi32(a, _mm256_castps_si256(m)); }  // true = -1
  static I select_i(M m, I a, I b) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b), _mm256_castsi256_ps(a), m));
  }
  static I bit_where(M m, uint32_t bit) { return _mm256_and_si256(_mm256_castps_si256(m), set1i(bit)); }

  static M no_lanes() { return _mm256_setzero_ps(); }
  static M all_lanes() { return _mm256_castsi256_ps(_mm256_set1_epi32(-1)); }
  static M or_mask(M a, M b) { return _mm256_or_ps(a, b); }
  static unsigned lane_bits(M m) { return static_cast<unsigned>(_mm256_movemask_ps(m)); }
  static M and_not(M a, M b) { return _mm256_andnot_ps(b, a); }
  static bool all(M m) { return _mm256_movemask_ps(m) == 0xFF; }

  static void store_bytes(uint8_t* p, I v) {  // the low byte of each lane (values 0..255)
    const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(words, words));
  }

  static Table load_table(const float* t) { return {_mm256_loadu_ps(t), _mm256_loadu_ps(t + 8)}; }
  // Entries 0..7 or 8..15 by bit 3 of the index, moved to the sign bit for blendv.
  static F lookup(const Table& t, I index) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.low, index), _mm256_permutevar8x32_ps(t.high, index),
                            _mm256_castsi256_ps(_mm256_slli_epi32(index, 28)));
  }
  static M bit_set(I a, int bit) {
    const I b = _mm256_set1_epi32(1 << bit);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(a, b), b));
  }

  // The 64-bit products a * m per lane: mul_epu32 multiplies the even lanes, then the odd ones
  // shifted down; shifts and blends put every half in its lane.
  static void mulhilo(I a, I m, I& hi, I& lo) {
    const I even = _mm256_mul_epu32(a, m);
    const I odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  }
  static I xor3(I a, I b, I c) { return _mm256_xor_si256(_mm256_xor_si256(a, b), c); }

  // The 16-bit draws of 8 consecutive words w (kernel::draw_of), in element order: the low half of
  // word m is element 2m, so zero-extending the halves of w's lower (upper) 4 words gives elements
  // 0..7 (8..15).
  static I draws(I w, int upper) {
    return _mm256_cvtepu16_epi32(upper ? _mm256_extracti128_si256(w, 1) : _mm256_castsi256_si128(w));
  }

  // Words w0..w3 of the 8 blocks to element order. Within each 128-bit lane q the unpacks give out
  // vector r the four words of Philox lane 4q + r, i.e. (kLaneBlock) block 2r + q: words
  // 8r + 4q .. 8r + 4q + 3, exactly lane q of out vector r.
  static void transpose(I w0, I w1, I w2, I w3, I out[4]) {
    const I t0 = _mm256_unpacklo_epi32(w0, w1), t1 = _mm256_unpackhi_epi32(w0, w1);
    const I t2 = _mm256_unpacklo_epi32(w2, w3), t3 = _mm256_unpackhi_epi32(w2, w3);
    out[0] = _mm256_unpacklo_epi64(t0, t2);
    out[1] = _mm256_unpackhi_epi64(t0, t2);
    out[2] = _mm256_unpacklo_epi64(t1, t3);
    out[3] = _mm256_unpackhi_epi64(t1, t3);
  }
};

}  // namespace
}  // namespace zipml::cpu

#include "simd_span.h"

namespace zipml::cpu {
namespace {
void fake_quantize_avx2(const float* x, float* out, int64_t n, uint64_t first, const SpanParams& p) {
  fake_quantize_span<Avx2>(x, out, n, first, p);
}
bool quantize_avx2(const float* x, uint8_t* codes, int64_t n, uint64_t first, const SpanParams& p) {
  return quantize_span<Avx2>(x, codes, n, first, p);
}
bool double_sample_avx2(const float* x, uint8_t* index, uint8_t* up, int64_t n, uint64_t first,
                        const SpanParams& p) {
  return double_sample_span<Avx2>(x, index, up, n, first, p);
}

// The largest kernel::magnitude_bits, for AVX-512 too (see avx512_span_kernels). Four accumulators,
// so that the maxima of consecutive vectors do not wait on each other.
int32_t max_magnitude_avx2(const float* x, int64_t n, int32_t m) {
  using V = Avx2;
  const V::I magnitude = V::set1i(0x7FFFFFFFu);
  V::I acc[4] = {V::set1i(0), V::set1i(0), V::set1i(0), V::set1i(0)};
  int64_t i = 0;
  for (; i + 4 * V::kLanes <= n; i += 4 * V::kLanes)
    for (int r = 0; r < 4; ++r) acc[r] = V::maxi(acc[r], V::andi(V::bits(V::load(x + i + r * V::kLanes)), magnitude));
  alignas(32) uint32_t lanes[V::kLanes];
  V::storei(lanes, V::maxi(V::maxi(acc[0], acc[1]), V::maxi(acc[2], acc[3])));
  for (uint32_t l : lanes) m = std::max(m, static_cast<int32_t>(l));
  return scalar_span_kernels().max_magnitude(x + i, n - i, m);
}

// Eight values at a time; the tails through c10's scalar conversions.
void from_half_avx2(const c10::Half* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

void to_half_avx2(const float* src, c10::Half* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) dst[i] = static_cast<c10::Half>(src[i]);
}

void from_bfloat16_avx2(const c10::BFloat16* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
  }
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

// c10's round_to_nearest_even: (u + 0x7FFF + bit 16 of u) >> 16, and 0x7FC0 for NaN.
void to_bfloat16_avx2(const float* src, c10::BFloat16* dst, int64_t n) {
  int64_t i = 0;
  const __m256i bias = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1), nan = _mm256_set1_epi32(0x7FC0);
  for (; i + 8 <= n; i += 8) {
    const __m256 f = _mm256_loadu_ps(src + i);
    const __m256i u = _mm256_castps_si256(f);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, odd)), 16);
    r = _mm256_blendv_epi8(r, nan, _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);  // 16-bit lanes 0-3, 8-11
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_castsi256_si128(packed));
  }
  for (; i < n; ++i) dst[i] = static_cast<c10::BFloat16>(src[i]);
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

#ifdef ZIPML_HAVE_AVX2
namespace {
bool has_avx2_and_f16c() {
  static const bool supported = [] {
    __builtin_cpu_init();
    unsigned eax, ebx, ecx, edx;  // F16C: CPUID leaf 1, ECX bit 29 (not every compiler's builtin knows it)
    return __builtin_cpu_supports("avx2") && __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29));
  }();
  return supported;
}
}  // namespace
#endif

const SpanKernels* avx2_span_kernels() {
#ifdef ZIPML_HAVE_AVX2
  static const SpanKernels kernels{"avx2", fake_quantize_avx2, quantize_avx2, double_sample_avx2,
                                   max_magnitude_avx2};
  return has_avx2_and_f16c() ? &kernels : nullptr;
#else
  return nullptr;
#endif
}

const FloatConverters* avx2_float_converters() {
#ifdef ZIPML_HAVE_AVX2
  static const FloatConverters converters{from_half_avx2, to_half_avx2, from_bfloat16_avx2, to_bfloat16_avx2};
  return has_avx2_and_f16c() ? &converters : nullptr;
#else
  return nullptr;
#endif
}

}  // namespace zipml::cpu
