// AVX-512 variant of linear/kernels.h (F, BW, VL, VNNI and VBMI: Ice Lake and later).
//
// Decoding 64 codes of one record takes three instructions for the index plane (widen, VPMULTISHIFTQB
// to pick each field, mask) and one masked byte add for the round-up plane, whose 64 bits load
// straight into a mask register. Forward: VPDPBUSD sums code * model over 4 features per lane.
// Gradient: 4 rows' codes are interleaved by VPUNPCK{L,H}{BW,WD} so that VPDPBUSD's four products
// run over the rows, times the broadcast residual codes of those rows; the interleave permutes
// features within 128-bit lanes, which a 4 x 4 shuffle of lanes undoes once per block of 64.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../kernels/common/quantize.h"
#include "kernels.h"

#pragma GCC push_options
// GCC 12 warns inside its own AVX-512 headers (_mm512_undefined_*), a known false positive.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,avx2,bmi2,popcnt")

// The core's AVX-512 layer and its Philox over 16 counters per register (kernels/cpu).
#include "../kernels/cpu/simd_avx512.h"
#include "../kernels/cpu/simd_philox.h"

namespace zipml::linear {
namespace avx512 {

#define ZIPML_VECTOR_BYTES 64

#include "kernels_float_impl.h"

// Codes of the 64 features [j, j + 64) of one record (j a multiple of 64): interval index plus the
// round-up bit. Reads whole 64-feature blocks; the store keeps slack after its last record.
template <int BITS>
inline __m512i decode64(const uint8_t* index, const uint8_t* up, int64_t j) {
  uint64_t bits_up;
  std::memcpy(&bits_up, up + j / 8, 8);
  __m512i interval;
  if constexpr (BITS == 8) {
    interval = _mm512_loadu_si512(index + j);
  } else if constexpr (BITS == 4) {
    // 8 nibbles per 32-bit word -> one word per qword, then nibble b of each qword to byte b.
    const __m512i words = _mm512_cvtepu32_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(index + j / 2)));
    interval = _mm512_and_si512(_mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x1C1814100C080400LL), words),
                                _mm512_set1_epi8(0x0F));
  } else if constexpr (BITS == 2) {
    const __m512i words = _mm512_cvtepu16_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(index + j / 4)));
    interval = _mm512_and_si512(_mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x0E0C0A0806040200LL), words),
                                _mm512_set1_epi8(0x03));
  } else {
    interval = _mm512_setzero_si512();
  }
  return _mm512_mask_add_epi8(interval, _cvtu64_mask64(bits_up), interval, _mm512_set1_epi8(1));
}

template <int BITS>
int64_t int_dot_bits(const uint8_t* index, const uint8_t* up, const int8_t* m, int64_t c0, int64_t c1) {
  int64_t total = 0;
  int64_t j = c0;
  while (j < c1) {
    // Each lane gains at most 4 * 255 * 127 per step: flush to 64 bits every 4096 steps.
    const int64_t stop = j + 64 * 4096 < c1 ? j + 64 * 4096 : c1;
    __m512i acc = _mm512_setzero_si512();
    for (; j < stop; j += 64) acc = _mm512_dpbusd_epi32(acc, decode64<BITS>(index, up, j), _mm512_loadu_si512(m + j));
    total += _mm512_reduce_add_epi32(acc);
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
  for (int64_t j = c0; j < c1; j += 64) {
    __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int64_t k = 0; k < nrows; k += 4) {
      const __m512i r0 = decode64<BITS>(index[k], up[k], j), r1 = decode64<BITS>(index[k + 1], up[k + 1], j);
      const __m512i r2 = decode64<BITS>(index[k + 2], up[k + 2], j), r3 = decode64<BITS>(index[k + 3], up[k + 3], j);
      const __m512i a = _mm512_unpacklo_epi8(r0, r1), b = _mm512_unpackhi_epi8(r0, r1);
      const __m512i c = _mm512_unpacklo_epi8(r2, r3), d = _mm512_unpackhi_epi8(r2, r3);
      uint32_t packed;
      std::memcpy(&packed, t + k, 4);
      const __m512i tk = _mm512_set1_epi32(static_cast<int32_t>(packed));
      // lane L, dword i of acc_p holds feature 16 L + 4 p + i
      acc0 = _mm512_dpbusd_epi32(acc0, _mm512_unpacklo_epi16(a, c), tk);
      acc1 = _mm512_dpbusd_epi32(acc1, _mm512_unpackhi_epi16(a, c), tk);
      acc2 = _mm512_dpbusd_epi32(acc2, _mm512_unpacklo_epi16(b, d), tk);
      acc3 = _mm512_dpbusd_epi32(acc3, _mm512_unpackhi_epi16(b, d), tk);
    }
    // Transpose the 4 x 4 grid of 128-bit lanes: output block L = lane L of acc0..acc3.
    const __m512i x0 = _mm512_shuffle_i64x2(acc0, acc1, 0x44), x1 = _mm512_shuffle_i64x2(acc2, acc3, 0x44);
    const __m512i x2 = _mm512_shuffle_i64x2(acc0, acc1, 0xEE), x3 = _mm512_shuffle_i64x2(acc2, acc3, 0xEE);
    int32_t* out = G + (j - c0);
    _mm512_storeu_si512(out, _mm512_shuffle_i64x2(x0, x1, 0x88));
    _mm512_storeu_si512(out + 16, _mm512_shuffle_i64x2(x0, x1, 0xDD));
    _mm512_storeu_si512(out + 32, _mm512_shuffle_i64x2(x2, x3, 0x88));
    _mm512_storeu_si512(out + 48, _mm512_shuffle_i64x2(x2, x3, 0xDD));
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

template <int BITS>
void decode_uniform_bits(const uint8_t* index, const uint8_t* up, int64_t c0, int64_t c1, float* out) {
  constexpr int K = 1 << BITS;
  const __m512 step = _mm512_set1_ps(1.0f / static_cast<float>(K - 1));
  const __m512i shift = _mm512_set1_epi32(K - 1);
  for (int64_t j = c0; j < c1; j += 64) {
    alignas(64) uint8_t codes[64];
    _mm512_store_si512(codes, decode64<BITS>(index, up, j));
    for (int q = 0; q < 4 && j + 16 * q < c1; ++q) {
      const __m512i c = _mm512_cvtepu8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(codes + 16 * q)));
      const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(c, c), shift)), step);
      const int64_t left = c1 - (j + 16 * q);
      _mm512_mask_storeu_ps(out + (j - c0) + 16 * q, left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1), v);
    }
  }
}

void decode_uniform(const uint8_t* index, const uint8_t* up, int64_t c0, int64_t c1, int bits, float* out) {
  switch (bits) {
    case 1: return decode_uniform_bits<1>(index, up, c0, c1, out);
    case 2: return decode_uniform_bits<2>(index, up, c0, c1, out);
    case 4: return decode_uniform_bits<4>(index, up, c0, c1, out);
    case 8: return decode_uniform_bits<8>(index, up, c0, c1, out);
    default: return decode_uniform_scalar(index, up, c0, c1, bits, out);
  }
}

using Philox = cpu::PhiloxStream<cpu::Avx512>;

// Stored as they are, the words of the elements from an even index on are their draws (little-endian).
// Element e's words are in Philox block e / 8 (PhiloxStream::words: 64 words, 128 draws, per batch).
void philox_draws(uint64_t seed, uint64_t offset, uint64_t first, int64_t n, uint16_t* out) {
  // Up to the first multiple of 8, and after the last whole group of 128: the scalar loop.
  const int64_t lead = std::min<int64_t>(n, (8 - static_cast<int64_t>(first & 7)) & 7);
  philox_draws_scalar(seed, offset, first, lead, out);
  Philox stream;
  stream.init(seed, offset);
  __m512i words[2][2][4];  // [batch][stream][vector]
  int64_t i = lead;
  for (; i + 256 <= n; i += 256) {
    stream.words<2>((first + i) >> 3, words, 0);
    for (int q = 0; q < 8; ++q) _mm512_storeu_si512(out + i + 32 * q, words[q >> 2][0][q & 3]);
  }
  for (; i + 128 <= n; i += 128) {
    stream.words<1>((first + i) >> 3, words, 0);
    for (int q = 0; q < 4; ++q) _mm512_storeu_si512(out + i + 32 * q, words[0][0][q]);
  }
  philox_draws_scalar(seed, offset, first + i, n - i, out + i);
}

// Lanes `tie` of 16 elements from index `at`, whose draw r equals floor(frac * 2^16): kernel::round_up
// decides them (down if frac * 2^16 is an integer, else by the element's tie word). Probability 2^-16
// per element, so out of the loop.
__attribute__((noinline, cold)) __mmask16 round_up_ties(uint64_t seed, uint64_t offset, int64_t at, __m512 frac,
                                                        __m512i r, __mmask16 tie) {
  alignas(64) float f[16];
  alignas(64) uint32_t draw[16];
  _mm512_store_ps(f, frac);
  _mm512_store_si512(draw, r);
  __mmask16 up = 0;
  for (int i = 0; i < 16; ++i) {
    const kernel::ElementDraw d{draw[i], seed, offset, static_cast<uint64_t>(at + i)};
    if (((tie >> i) & 1) && kernel::round_up(f[i], kernel::kStochastic, d)) up |= static_cast<__mmask16>(1u << i);
  }
  return up;
}

int64_t quantize_symmetric(const float* v, int64_t begin, int64_t end, float scale, int bits, uint64_t seed,
                           uint64_t offset, float* out_f, int8_t* out_i) {
  const kernel::Levels grid = symmetric_grid(bits);
  const int count = grid.count, half = symmetric_half(bits);
  const __m512 inv = _mm512_set1_ps(kernel::inverse_scale(scale));
  const __m512 half_span = _mm512_set1_ps(0.5f * static_cast<float>(count - 1));
  const __m512 step = _mm512_set1_ps(grid.step()), s = _mm512_set1_ps(scale);
  const __m512i top = _mm512_set1_epi32(count - 2);
  __m512i level_sum = _mm512_setzero_si512();
  // 16 values from v + at, with their draws r.
  auto quantize16 = [&](int64_t at, __m512i r) {
    // v = clamp(x / s, -1, 1); t = (v + 1) (K - 1) / 2; j = min(trunc t, K - 2); frac = t - j in [0, 1].
    const __m512 x = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(_mm512_loadu_ps(v + at), inv), _mm512_set1_ps(-1.0f)),
                                   _mm512_set1_ps(1.0f));
    const __m512 t = _mm512_mul_ps(_mm512_add_ps(x, _mm512_set1_ps(1.0f)), half_span);
    const __m512i lower = _mm512_min_epi32(_mm512_cvttps_epi32(t), top);
    const __m512 frac = _mm512_sub_ps(t, _mm512_cvtepi32_ps(lower));
    // kernel::round_up in integers: up iff r < kernel::draw_threshold(frac) = floor(frac * 2^16),
    // unless r equals it, the rare tie.
    const __m512i floor16 = _mm512_cvttps_epi32(_mm512_mul_ps(frac, _mm512_set1_ps(65536.0f)));
    __mmask16 up = _mm512_cmplt_epi32_mask(r, floor16);
    const __mmask16 tie = _mm512_cmpeq_epi32_mask(r, floor16);
    if (tie) up |= round_up_ties(seed, offset, at, frac, r, tie);
    const __m512i code = _mm512_mask_add_epi32(lower, up, lower, _mm512_set1_epi32(1));
    if (out_f) {
      const __m512i signed_level = _mm512_sub_epi32(_mm512_add_epi32(code, code), _mm512_set1_epi32(count - 1));
      _mm512_storeu_ps(out_f + at, _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(signed_level), step), s));
    }
    const __m512i level = _mm512_sub_epi32(code, _mm512_set1_epi32(half));
    level_sum = _mm512_add_epi32(level_sum, level);
    if (out_i) _mm_storeu_si128(reinterpret_cast<__m128i*>(out_i + at), _mm512_cvtepi32_epi8(level));
  };
  // Up to the first multiple of 8 (a Philox call's elements), and what the vectors leave: the scalar kernel.
  int64_t j = std::min(end, (begin + 7) & ~int64_t{7});
  int64_t sum = j > begin ? quantize_symmetric_scalar(v, begin, j, scale, bits, seed, offset, out_f, out_i) : 0;
  Philox stream;
  stream.init(seed, offset);
  __m512i words[2][2][4];  // [batch][stream][vector]: 16 words, 32 draws, each
  for (; j + 256 <= end; j += 256) {  // two sets of counters at once
    stream.words<2>(static_cast<uint64_t>(j) >> 3, words, 0);
    for (int q = 0; q < 16; ++q) quantize16(j + 16 * q, cpu::Avx512::draws(words[q >> 3][0][(q >> 1) & 3], q & 1));
  }
  while (j + 16 <= end) {  // 16 values at a time from one set (128 draws)
    stream.words<1>(static_cast<uint64_t>(j) >> 3, words, 0);
    for (int q = 0; q < 8 && j + 16 <= end; ++q, j += 16) quantize16(j, cpu::Avx512::draws(words[0][0][q >> 1], q & 1));
  }
  // |level| < 2^15 and at most 2^16 lanes' worth per call in practice; reduce in 64 bits anyway.
  sum += _mm512_reduce_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(level_sum))) +
         _mm512_reduce_add_epi64(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(level_sum, 1)));
  if (j < end) sum += quantize_symmetric_scalar(v, j, end, scale, bits, seed, offset, out_f, out_i);
  return sum;
}

}  // namespace avx512
}  // namespace zipml::linear

#pragma GCC pop_options
#pragma GCC diagnostic pop

namespace zipml::linear {

const Kernels* avx512_kernels() {
  static const Kernels k{"avx512",
                         avx512::dot_impl,
                         avx512::gemv_t_impl,
                         avx512::int_dot,
                         avx512::int_gemv_t,
                         avx512::quantize_symmetric,
                         avx512::max_abs_impl,
                         avx512::decode_uniform,
                         avx512::philox_draws};
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
  return ok ? &k : nullptr;
}

}  // namespace zipml::linear
