// AVX2 variant of linear/kernels.h: 32 codes per register. Without VNNI the byte products go
// through VPMADDUBSW (pairs, 16-bit, saturating) and VPMADDWD (to 32 bits); 8-bit codes are split
// into two nibbles first so that no 16-bit sum can saturate.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,bmi2,popcnt")

namespace zipml::linear {
namespace avx2 {

#define ZIPML_VECTOR_BYTES 32

#include "kernels_float_impl.h"

// Codes of the 32 features [j, j + 32) of one record (j a multiple of 32).
template <int BITS>
inline __m256i decode32(const uint8_t* index, const uint8_t* up, int64_t j) {
  uint32_t bits_up;
  std::memcpy(&bits_up, up + j / 8, 4);
  // Byte i of `spread` is byte i / 8 of the round-up bits; test bit i % 8.
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int32_t>(bits_up)),
      _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ULL));
  const __m256i rounds_up = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);  // 0xFF where set
  __m256i interval;
  if constexpr (BITS == 8) {
    interval = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(index + j));
  } else if constexpr (BITS == 4) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(index + j / 2));
    const __m128i nibble = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(v, nibble), hi = _mm_and_si128(_mm_srli_epi16(v, 4), nibble);
    interval = _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
  } else if constexpr (BITS == 2) {
    uint64_t packed;
    std::memcpy(&packed, index + j / 4, 8);
    // Each dword gets one packed byte four times; field r of byte b goes to byte r of the dword.
    const __m256i rep = _mm256_shuffle_epi8(_mm256_set1_epi64x(static_cast<int64_t>(packed)),
                                            _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4,
                                                             5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7));
    const __m256i f0 = _mm256_and_si256(rep, _mm256_set1_epi32(0x00000003));
    const __m256i f1 = _mm256_and_si256(_mm256_srli_epi32(rep, 2), _mm256_set1_epi32(0x00000300));
    const __m256i f2 = _mm256_and_si256(_mm256_srli_epi32(rep, 4), _mm256_set1_epi32(0x00030000));
    const __m256i f3 = _mm256_and_si256(_mm256_srli_epi32(rep, 6), _mm256_set1_epi32(0x03000000));
    interval = _mm256_or_si256(_mm256_or_si256(f0, f1), _mm256_or_si256(f2, f3));
  } else {
    interval = _mm256_setzero_si256();
  }
  return _mm256_sub_epi8(interval, rounds_up);
}

// 32-bit sums of 4 consecutive byte products u * s (u unsigned codes, s signed), exact for
// u <= 255: 8-bit codes are split into nibbles, u = 16 hi + lo.
template <int BITS>
inline __m256i dot4(__m256i u, __m256i s) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (BITS == 8) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i lo = _mm256_and_si256(u, nibble), hi = _mm256_and_si256(_mm256_srli_epi16(u, 4), nibble);
    return _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(hi, s), _mm256_set1_epi16(16)),
                            _mm256_madd_epi16(_mm256_maddubs_epi16(lo, s), ones));
  } else {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), ones);
  }
}

template <int BITS>
int64_t int_dot_bits(const uint8_t* index, const uint8_t* up, const int8_t* m, int64_t c0, int64_t c1) {
  int64_t total = 0;
  int64_t j = c0;
  while (j < c1) {
    const int64_t stop = j + 32 * 4096 < c1 ? j + 32 * 4096 : c1;
    __m256i acc = _mm256_setzero_si256();
    for (; j < stop; j += 32)
      acc = _mm256_add_epi32(
          acc, dot4<BITS>(decode32<BITS>(index, up, j), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + j))));
    int32_t lanes[8];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes), acc);
    for (int l = 0; l < 8; ++l) total += lanes[l];
  }
  return total;
}

int64_t int_dot(const uint8_t* index, const uint8_t* up, const int8_t* m, int64_t c0, int64_t c1, int bits) {
  switch (bits) {
    case 1: return int_dot_bits<1>(index, up, m, c0, c1);
    case 2: return int_dot_bits<2>(index, up, m, c0, c1);
    case 4: return int_dot_bits<4>(index, up, m, c0, c1);
    default: return int_dot_bits<8>(index, up, m, c0, c1);
  }
}

template <int BITS>
void int_gemv_t_bits(const uint8_t* const* index, const uint8_t* const* up, const int8_t* t, int64_t nrows, int64_t c0,
                     int64_t c1, int32_t* G) {
  for (int64_t j = c0; j < c1; j += 32) {
    __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int64_t k = 0; k < nrows; k += 4) {
      const __m256i r0 = decode32<BITS>(index[k], up[k], j), r1 = decode32<BITS>(index[k + 1], up[k + 1], j);
      const __m256i r2 = decode32<BITS>(index[k + 2], up[k + 2], j), r3 = decode32<BITS>(index[k + 3], up[k + 3], j);
      const __m256i a = _mm256_unpacklo_epi8(r0, r1), b = _mm256_unpackhi_epi8(r0, r1);
      const __m256i c = _mm256_unpacklo_epi8(r2, r3), d = _mm256_unpackhi_epi8(r2, r3);
      uint32_t packed;
      std::memcpy(&packed, t + k, 4);
      const __m256i tk = _mm256_set1_epi32(static_cast<int32_t>(packed));
      // lane L, dword i of acc_p holds feature 16 L + 4 p + i
      acc0 = _mm256_add_epi32(acc0, dot4<BITS>(_mm256_unpacklo_epi16(a, c), tk));
      acc1 = _mm256_add_epi32(acc1, dot4<BITS>(_mm256_unpackhi_epi16(a, c), tk));
      acc2 = _mm256_add_epi32(acc2, dot4<BITS>(_mm256_unpacklo_epi16(b, d), tk));
      acc3 = _mm256_add_epi32(acc3, dot4<BITS>(_mm256_unpackhi_epi16(b, d), tk));
    }
    int32_t* out = G + (j - c0);
    // Output block L (16 features) = lane L of acc0..acc3.
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute2x128_si256(acc0, acc1, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 8), _mm256_permute2x128_si256(acc2, acc3, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16), _mm256_permute2x128_si256(acc0, acc1, 0x31));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 24), _mm256_permute2x128_si256(acc2, acc3, 0x31));
  }
}

void int_gemv_t(const uint8_t* const* index, const uint8_t* const* up, const int8_t* t, int64_t nrows, int64_t c0,
                int64_t c1, int bits, int32_t* G) {
  switch (bits) {
    case 1: return int_gemv_t_bits<1>(index, up, t, nrows, c0, c1, G);
    case 2: return int_gemv_t_bits<2>(index, up, t, nrows, c0, c1, G);
    case 4: return int_gemv_t_bits<4>(index, up, t, nrows, c0, c1, G);
    default: return int_gemv_t_bits<8>(index, up, t, nrows, c0, c1, G);
  }
}

}  // namespace avx2
}  // namespace zipml::linear

#pragma GCC pop_options

namespace zipml::linear {

const Kernels* avx2_kernels() {
  static const Kernels k{"avx2",
                         avx2::dot_impl,
                         avx2::gemv_t_impl,
                         avx2::int_dot,
                         avx2::int_gemv_t,
                         quantize_symmetric_scalar,
                         avx2::max_abs_impl,
                         decode_uniform_scalar,
                         philox_draws_scalar};
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2");
  return ok ? &k : nullptr;
}

}  // namespace zipml::linear
