// The per-element arithmetic of ZipML quantization, one definition for every kernel: the scalar CPU
// path, the SIMD CPU paths (which reproduce it bit for bit) and the CUDA kernels.
//
// A value x with scale s is normalised to v = clamp(x * (1/s), lo, hi), where lo and hi are the
// first and last level, and located in the interval [L_j, L_j+1] that contains it (j in 0..K-2):
//   * stochastic rounding rounds up with probability frac = (v - L_j) / (L_j+1 - L_j), so that
//     E[L_code] = v and Var = (L_j+1 - v)(v - L_j)   (ZipML, arXiv 1611.05402, Section 2);
//   * nearest rounding rounds up iff frac >= 1/2 (ties round up).
// The dequantised value is L_code * s. All of it is float32 arithmetic without fused multiply-adds,
// so that every path computes the same bits.
#pragma once
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "macros.h"
#include "philox.h"

namespace zipml::kernel {

enum Rounding : int { kStochastic = 0, kNearest = 1 };

// A codebook of `count` sorted levels in [-1, 1]: either a table, or the uniform grid of `count`
// points with endpoints -1 and 1, level i = (2i - (K-1)) * (1 / (K-1)), exact at both ends for
// K = 2^bits. The uniform grid is located arithmetically, a table by binary search.
struct Levels {
  const float* table;  // nullptr: the uniform grid
  int count;           // K >= 1 (>= 2 for the uniform grid)

  ZIPML_HD float step() const { return 1.0f / static_cast<float>(count - 1); }
  ZIPML_HD float at(int i) const {
    return table ? table[i] : static_cast<float>(2 * i - (count - 1)) * step();
  }
  ZIPML_HD float lo() const { return table ? table[0] : -1.0f; }
  ZIPML_HD float hi() const { return table ? table[count - 1] : 1.0f; }
};

struct Interval {
  int index;   // j: the value lies in [L_j, L_j+1]
  float frac;  // (v - L_j) / (L_j+1 - L_j), in [0, 1]
};

ZIPML_HD float quiet_nan() {
  const uint32_t bits = 0x7FC00000u;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

ZIPML_HD bool is_finite(float x) { return (x < 0.0f ? -x : x) <= FLT_MAX; }

// |x| as its bit pattern, an int32: magnitudes compare as their patterns do, and every NaN's pattern
// exceeds +Inf's, so the largest pattern of a run is its max-abs, or a NaN where it holds one (the
// max-abs scale of the CPU and CUDA kernels, the same bits on both).
ZIPML_HD int32_t magnitude_bits(float x) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof bits);
  return static_cast<int32_t>(bits & 0x7FFFFFFFu);
}

// A scale is usable when finite and >= 0; anything else marks its whole group invalid.
ZIPML_HD bool valid_scale(float s) { return s >= 0.0f && s <= FLT_MAX; }

// 1/s, or 0 when s is 0 or so small that 1/s overflows: the group then quantizes v = 0.
ZIPML_HD float inverse_scale(float s) {
  const float inv = 1.0f / s;
  return (s > 0.0f && inv <= FLT_MAX) ? inv : 0.0f;
}

ZIPML_HD float normalize(float x, float inv_s, Levels levels) {
  const float v = x * inv_s;
  const float above = v > levels.lo() ? v : levels.lo();
  return above < levels.hi() ? above : levels.hi();
}

// Locates a normalised value v (already clamped to [lo, hi]).
ZIPML_HD Interval locate(float v, Levels levels) {
  const int k = levels.count;
  if (levels.table == nullptr) {
    const float t = (v + 1.0f) * (0.5f * static_cast<float>(k - 1));
    int j = static_cast<int>(t);
    j = j < k - 2 ? j : k - 2;
    return Interval{j, t - static_cast<float>(j)};
  }
  if (k < 2) return Interval{0, 0.0f};
  // Largest j <= K-2 with table[j] <= v.
  int a = 0, b = k - 1;
  while (b - a > 1) {
    const int m = (a + b) >> 1;
    if (levels.table[m] <= v) a = m; else b = m;
  }
  return Interval{a, (v - levels.table[a]) / (levels.table[a + 1] - levels.table[a])};
}

// The randomness of one element of stream (seed, offset): its 16-bit draw r, and where its tie word
// lies (nearest rounding reads neither).
struct ElementDraw {
  uint32_t r;
  uint64_t seed, offset, index;

  ZIPML_HD uint32_t tie_word() const { return philox_tie_word(seed, offset, index); }
};

// Stochastic rounding rounds up iff u < frac, for u = (r + w * 2^-32) * 2^-16 uniform on 48 bits:
// r the element's draw, w its tie word. With f = frac * 2^16 (exact) and t = floor(f), the draw
// decides unless r = t < f, a tie of probability below 2^-16: only then is w read. Hence half a
// Philox word per element, and P(up) = frac exactly when frac is a multiple of 2^-48 (every float
// frac >= 2^-24 is), within 2^-48 of it otherwise.

// t = floor(frac * 2^16) clamped to [0, 2^16], a NaN fraction to 0: up iff r < t, unless r = t.
ZIPML_HD int32_t draw_threshold(float frac) {
  const float f = frac * 65536.0f;
  return static_cast<int32_t>(f > 0.0f ? (f < 65536.0f ? f : 65536.0f) : 0.0f);
}

// A tie, r = t: up iff w < ceil(rem * 2^32) for rem = f - r, exact (Sterbenz), and so is rem * 2^32
// < 2^32; for an integer w, w < rem * 2^32 iff w < ceil(rem * 2^32). rem = 0 (or NaN) is no tie:
// down, as r = f (or a NaN fraction) is not below.
ZIPML_HD int tie_rounds_up(float frac, uint32_t r, uint32_t tie_word) {
  const float rem = frac * 65536.0f - static_cast<float>(r);
  if (!(rem > 0.0f)) return 0;
  return static_cast<uint64_t>(tie_word) < static_cast<uint64_t>(ceilf(rem * 4294967296.0f));
}

// The branch is on the rare tie, not on the outcome: it predicts well.
ZIPML_HD int round_up(float frac, int rounding, const ElementDraw& d) {
  if (rounding == kNearest) return frac >= 0.5f;
  const int32_t t = draw_threshold(frac), r = static_cast<int32_t>(d.r);
  if (r != t) return r < t;
  return tie_rounds_up(frac, d.r, d.tie_word());
}

ZIPML_HD int quantize_code(float x, float inv_s, Levels levels, int rounding, const ElementDraw& d) {
  const Interval at = locate(normalize(x, inv_s, levels), levels);
  return at.index + round_up(at.frac, rounding, d);
}

// quantize + dequantize in one step. Non-finite inputs and invalid scales give NaN.
ZIPML_HD float fake_quantize_value(float x, float s, float inv_s, Levels levels, int rounding,
                                   const ElementDraw& d) {
  if (!is_finite(x) || !valid_scale(s)) return quiet_nan();
  return levels.at(quantize_code(x, inv_s, levels, rounding, d)) * s;
}

// Number of bits that hold an interval index of a double-sampled value: ceil(log2(K - 1)).
ZIPML_HD int interval_bits(int num_levels) {
  int bits = 0;
  while ((1 << bits) < num_levels - 1) ++bits;
  return bits;
}

}  // namespace zipml::kernel
