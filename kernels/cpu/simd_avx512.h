// The AVX-512 (F, BW, DQ, VL) instruction-set layer V of simd_span.h and simd_philox.h: 16 lanes,
// 16 Philox counters per register, codebooks of up to 32 levels in registers. Included inside a
// `target` region that enables at least those extensions, after <immintrin.h>.
#pragma once

#include <cstdint>

namespace zipml::cpu {
namespace {

struct Avx512 {
  static constexpr int kLanes = 16;
  static constexpr int kTableMax = 32;
  // Philox lane 4q + r computes block 4r + q of the 16: see transpose.
  static constexpr uint32_t kLaneBlock[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};

  using F = __m512;
  using I = __m512i;
  using M = __mmask16;
  struct Table {  // 32 floats
    F low, high;
  };

  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void stream(float* p, F v) { _mm512_stream_ps(p, v); }  // p aligned to the vector
  static void stream_fence() { _mm_sfence(); }
  static I loadi(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static I set1i(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }

  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }  // a > b ? a : b
  static F min(F a, F b) { return _mm512_min_ps(a, b); }  // a < b ? a : b
  static M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M le(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static M ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  // NaN or +-Inf: quiet NaN | +Inf | -Inf | signalling NaN.
  static M not_finite(F x) { return _mm512_fpclass_ps_mask(x, 0x01 | 0x08 | 0x10 | 0x80); }
  static F select(M m, F a, F b) { return _mm512_mask_blend_ps(m, b, a); }

  static I cvtt(F a) { return _mm512_cvttps_epi32(a); }
  static F fraction(F a) { return _mm512_reduce_ps(a, _MM_FROUND_TO_NEG_INF); }  // a - floor(a)
  static F cvt(I a) { return _mm512_cvtepi32_ps(a); }
  static I addi(I a, I b) { return _mm512_add_epi32(a, b); }
  static I subi(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I mini(I a, I b) { return _mm512_min_epi32(a, b); }
  static I ori(I a, I b) { return _mm512_or_si512(a, b); }
  static I srli16(I a) { return _mm512_srli_epi32(a, 16); }
  static M lti(I a, I b) { return _mm512_cmplt_epi32_mask(a, b); }
  static M eqi(I a, I b) { return _mm512_cmpeq_epi32_mask(a, b); }
  static M low16_zero(I a) { return _mm512_testn_epi32_mask(a, _mm512_set1_epi32(0xFFFF)); }
  static I cvt_ceil(F a) { return _mm512_cvt_roundps_epi32(a, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC); }
  static void storei(uint32_t* p, I v) { _mm512_storeu_si512(p, v); }
  static I inc_where(I a, M m) { return _mm512_mask_add_epi32(a, m, a, _mm512_set1_epi32(1)); }
  static I select_i(M m, I a, I b) { return _mm512_mask_blend_epi32(m, b, a); }
  static I bit_where(M m, uint32_t bit) { return _mm512_maskz_mov_epi32(m, set1i(bit)); }

  static M no_lanes() { return 0; }
  static M all_lanes() { return 0xFFFF; }
  static M or_mask(M a, M b) { return static_cast<M>(a | b); }
  static unsigned lane_bits(M m) { return m; }
  static M and_not(M a, M b) { return static_cast<M>(a & ~b); }
  static bool all(M m) { return m == 0xFFFF; }

  static void store_bytes(uint8_t* p, I v) {  // the low byte of each lane
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(v));
  }

  static Table load_table(const float* t) { return {_mm512_loadu_ps(t), _mm512_loadu_ps(t + 16)}; }
  static F lookup(const Table& t, I index) { return _mm512_permutex2var_ps(t.low, index, t.high); }
  static M bit_set(I a, int bit) { return _mm512_test_epi32_mask(a, _mm512_set1_epi32(1 << bit)); }

  // The 64-bit products a * m per lane, split: mul_epu32 multiplies the even lanes, and the odd
  // ones moved down; a dword swap within each qword puts every half in its lane.
  static void mulhilo(I a, I m, I& hi, I& lo) {
    const I even = _mm512_mul_epu32(a, m);
    const I odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    hi = _mm512_mask_shuffle_epi32(odd, 0x5555, even, _MM_PERM_CDAB);
    lo = _mm512_mask_shuffle_epi32(even, 0xAAAA, odd, _MM_PERM_CDAB);
  }
  static I xor3(I a, I b, I c) { return _mm512_ternarylogic_epi32(a, b, c, 0x96); }

  // The 16-bit draws of 16 consecutive words w (kernel::draw_of), in element order: the low half of
  // word m is element 2m, so zero-extending the halves of w's lower (upper) 8 words gives elements
  // 0..15 (16..31).
  static I draws(I w, int upper) {
    return _mm512_cvtepu16_epi32(upper ? _mm512_extracti64x4_epi64(w, 1) : _mm512_castsi512_si256(w));
  }

  // Words w0..w3 of the 16 blocks to element order. Within each 128-bit lane q the unpacks give
  // out vector r the four words of Philox lane 4q + r, i.e. (kLaneBlock) block 4r + q: words
  // 16r + 4q .. 16r + 4q + 3, exactly lane q of out vector r.
  static void transpose(I w0, I w1, I w2, I w3, I out[4]) {
    const I t0 = _mm512_unpacklo_epi32(w0, w1), t1 = _mm512_unpackhi_epi32(w0, w1);
    const I t2 = _mm512_unpacklo_epi32(w2, w3), t3 = _mm512_unpackhi_epi32(w2, w3);
    out[0] = _mm512_unpacklo_epi64(t0, t2);
    out[1] = _mm512_unpackhi_epi64(t0, t2);
    out[2] = _mm512_unpacklo_epi64(t1, t3);
    out[3] = _mm512_unpackhi_epi64(t1, t3);
  }
};

}  // namespace
}  // namespace zipml::cpu
