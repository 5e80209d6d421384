// The work of one CUDA thread in the quantization kernels of quantize_cuda.cu: one "item" is four
// consecutive elements [4b, 4b + 4), clipped to the tensor, whose draws are the halves of words 2b
// and 2b + 1 of the stream. Everything here is plain ZIPML_HD code over the per-element math of
// kernels/common/quantize.h, so the items compute the bits of the CPU kernels, and the same code
// can be run on the host to check the indexing without a GPU.
#pragma once
#include <cmath>
#include <cstdint>

#include "../common/quantize.h"

namespace zipml::cuda {

// Items of a tensor of numel elements.
ZIPML_HD int64_t items_of(int64_t numel) { return (numel + 3) / 4; }

// Four consecutive elements, aligned so that they load and store as one vector access.
template <class T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

// Elements [first, first + 4) of p converted to V; lanes at or past `numel` read V(0). `aligned`:
// p is aligned for Vec4<T>, so a full item is one vector load.
template <class T, class V>
ZIPML_HD void load4(const T* p, int64_t first, int64_t numel, bool aligned, V (&out)[4]) {
  if (aligned && first + 4 <= numel) {
    const Vec4<T> v = *reinterpret_cast<const Vec4<T>*>(p + first);
#pragma unroll
    for (int l = 0; l < 4; ++l) out[l] = static_cast<V>(v.v[l]);
  } else {
#pragma unroll
    for (int l = 0; l < 4; ++l) out[l] = first + l < numel ? static_cast<V>(p[first + l]) : V(0);
  }
}

// Stores the lanes of `in` below `numel` into p[first...], converted to T.
template <class T, class V>
ZIPML_HD void store4(T* p, int64_t first, int64_t numel, bool aligned, const V (&in)[4]) {
  if (aligned && first + 4 <= numel) {
    Vec4<T> v;
#pragma unroll
    for (int l = 0; l < 4; ++l) v.v[l] = static_cast<T>(in[l]);
    *reinterpret_cast<Vec4<T>*>(p + first) = v;
  } else {
#pragma unroll
    for (int l = 0; l < 4; ++l)
      if (first + l < numel) p[first + l] = static_cast<T>(in[l]);
  }
}

// Scale groups of a contiguous tensor: element e has scale[e / inner].
struct ScaleGroups {
  const float* scale;
  int64_t inner;  // elements per scale, >= 1
  bool narrow;    // every element index fits in 32 bits: a 32-bit division suffices

  ZIPML_HD int64_t of(int64_t e) const {
    return narrow ? static_cast<int64_t>(static_cast<uint32_t>(e) / static_cast<uint32_t>(inner)) : e / inner;
  }
};

// The group a thread is in, its scale and 1/scale, reloaded (one division) only when an element
// passes the end of the group: a cursor visits elements in increasing order, and for per-tensor
// scales it loads once per thread.
struct ScaleCursor {
  int64_t end = 0;  // one past the last element of the current group
  float s = 0.0f, inv = 0.0f;

  ZIPML_HD void seek(int64_t e, const ScaleGroups& g) {
    if (e < end) return;
    const int64_t group = g.of(e);
    end = (group + 1) * g.inner;
    s = g.scale[group];
    inv = kernel::inverse_scale(s);
  }
};

// What quantize, fake_quantize and double_sample share.
struct QuantizeParams {
  ScaleGroups groups;
  kernel::Levels levels;  // the table, when there is one, is staged in shared memory by the kernel
  int rounding;
  uint64_t seed, offset;
  int64_t numel;
};

// The draws of item b's elements in stream `offset`: words 2b and 2b + 1 are half of Philox block
// b / 2. Nearest rounding reads no words: skip Philox.
struct ItemDraws {
  kernel::ElementDraw d[4];
};

ZIPML_HD ItemDraws item_draws(const QuantizeParams& p, int64_t item, uint64_t offset) {
  uint32_t words[2] = {0u, 0u};
  if (p.rounding == kernel::kStochastic) {
    const kernel::Philox4 block = kernel::philox_block(p.seed, offset, static_cast<uint64_t>(item) >> 1);
    words[0] = block.v[2 * (item & 1)];
    words[1] = block.v[2 * (item & 1) + 1];
  }
  ItemDraws draws;
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    const uint64_t index = static_cast<uint64_t>(item) * 4 + l;
    draws.d[l] = kernel::ElementDraw{kernel::draw_of(words[l >> 1], index), p.seed, offset, index};
  }
  return draws;
}

// The input of an item as float32 (what the CPU drivers convert to before quantizing).
template <class T>
ZIPML_HD void load_item(const T* x, int64_t item, int64_t numel, bool aligned, float (&v)[4]) {
  load4(x, item * 4, numel, aligned, v);
}

// out = L[code] * s, NaN for non-finite x or an invalid scale (never fails: no error to report).
template <class T>
ZIPML_HD void fake_quantize_item(const float (&v)[4], T* out, bool aligned, int64_t item, const QuantizeParams& p,
                                 ScaleCursor& cursor) {
  const int64_t first = item * 4;
  const ItemDraws w = item_draws(p, item, p.offset);
  float r[4];
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    r[l] = 0.0f;
    if (first + l < p.numel) {
      cursor.seek(first + l, p.groups);
      r[l] = kernel::fake_quantize_value(v[l], cursor.s, cursor.inv, p.levels, p.rounding, w.d[l]);
    }
  }
  store4(out, first, p.numel, aligned, r);
}

// codes = code of x; false if some x or its scale cannot be quantized (NaN, Inf, invalid scale).
ZIPML_HD bool quantize_item(const float (&v)[4], uint8_t* codes, bool aligned, int64_t item, const QuantizeParams& p,
                            ScaleCursor& cursor) {
  const int64_t first = item * 4;
  const ItemDraws w = item_draws(p, item, p.offset);
  unsigned c[4];
  bool ok = true;
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    c[l] = 0;
    if (first + l < p.numel) {
      cursor.seek(first + l, p.groups);
      ok &= kernel::is_finite(v[l]) && kernel::valid_scale(cursor.s);
      c[l] = static_cast<unsigned>(kernel::quantize_code(v[l], cursor.inv, p.levels, p.rounding, w.d[l]));
    }
  }
  store4(codes, first, p.numel, aligned, c);
  return ok;
}

// Two independent stochastic samples (streams offset and offset + 1): the interval index, and the
// round-up bits of sample 1 (bit 0) and sample 2 (bit 1). p.rounding must be stochastic.
ZIPML_HD bool double_sample_item(const float (&v)[4], uint8_t* index, uint8_t* up, bool aligned, int64_t item,
                                 const QuantizeParams& p, ScaleCursor& cursor) {
  const int64_t first = item * 4;
  const ItemDraws w1 = item_draws(p, item, p.offset);
  const ItemDraws w2 = item_draws(p, item, p.offset + 1);
  unsigned j[4], u[4];
  bool ok = true;
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    j[l] = u[l] = 0;
    if (first + l < p.numel) {
      cursor.seek(first + l, p.groups);
      ok &= kernel::is_finite(v[l]) && kernel::valid_scale(cursor.s);
      const kernel::Interval at = kernel::locate(kernel::normalize(v[l], cursor.inv, p.levels), p.levels);
      j[l] = static_cast<unsigned>(at.index);
      u[l] = static_cast<unsigned>(kernel::round_up(at.frac, kernel::kStochastic, w1.d[l]) |
                                   kernel::round_up(at.frac, kernel::kStochastic, w2.d[l]) << 1);
    }
  }
  store4(index, first, p.numel, aligned, j);
  store4(up, first, p.numel, aligned, u);
  return ok;
}

// out = table[code + ((up >> up_bit) & 1)] * s (up may be null); false if a code is >= count (the
// value is then read at count - 1, as on the CPU).
template <class T>
ZIPML_HD bool dequantize_item(const uint8_t* codes, const uint8_t* up, int up_bit, const float* table, int count,
                              const ScaleGroups& groups, int64_t numel, bool aligned, int64_t item, T* out,
                              ScaleCursor& cursor) {
  const int64_t first = item * 4;
  unsigned c[4], u[4] = {0u, 0u, 0u, 0u};
  float r[4];
  load4(codes, first, numel, aligned, c);
  if (up != nullptr) load4(up, first, numel, aligned, u);
  bool ok = true;
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    r[l] = 0.0f;
    if (first + l < numel) {
      cursor.seek(first + l, groups);
      const unsigned code = c[l] + ((u[l] >> up_bit) & 1u);
      ok &= code < static_cast<unsigned>(count);
      const unsigned at = code < static_cast<unsigned>(count) ? code : static_cast<unsigned>(count - 1);
      r[l] = kernel::valid_scale(cursor.s) ? table[at] * cursor.s : kernel::quiet_nan();
    }
  }
  store4(out, first, numel, aligned, r);
  return ok;
}

// The histogram of v = clamp(x / s, -1, 1) over `bins` equal bins of [-1, 1] (optimal levels):
// for each element of the item its v and bin, plus the running min, max and finiteness.
struct HistogramItem {
  float v[4];
  int64_t bin[4];
  int count;  // lanes 0..count-1 are elements
};

struct HistogramRange {
  float lo, hi;
  bool ok;
};

template <class T>
ZIPML_HD HistogramItem histogram_item(const T* x, bool aligned, int64_t item, int64_t numel, const ScaleGroups& groups,
                                      int64_t bins, float half_bins, ScaleCursor& cursor, HistogramRange& range) {
  const kernel::Levels unit{nullptr, 2};
  const int64_t first = item * 4;
  float xv[4];
  load4(x, first, numel, aligned, xv);
  HistogramItem h;
  h.count = numel - first < 4 ? static_cast<int>(numel - first) : 4;
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    h.v[l] = 0.0f;
    h.bin[l] = 0;
    if (l < h.count) {
      cursor.seek(first + l, groups);
      range.ok &= kernel::is_finite(xv[l]) && kernel::valid_scale(cursor.s);
      const float v = kernel::normalize(xv[l], cursor.inv, unit);
      range.lo = v < range.lo ? v : range.lo;
      range.hi = v > range.hi ? v : range.hi;
      const int64_t b = static_cast<int64_t>((v + 1.0f) * half_bins);
      h.v[l] = v;
      h.bin[l] = b < bins - 1 ? b : bins - 1;
    }
  }
  return h;
}

// Order-independent sums for the histogram. A value a in [-1, 1] is truncated to a multiple of
// 2^-72 (exact for every float with |a| >= 2^-49) and split into three signed base-2^24 digits,
// a = sum_i digit_i * 2^(-24 (i + 1)), which are summed as int64. Integer addition is associative,
// so sums accumulated by atomics in any order are identical (a deterministic histogram), exact up to
// the truncation, and do not overflow before 2^39 values.
constexpr int kFixedDigits = 3;

struct FixedPoint {
  int64_t digit[kFixedDigits];
};

// a: |a| <= 1. Every step is exact in float64 (each remainder is a multiple of ulp(|a| * 2^72)).
ZIPML_HD FixedPoint to_fixed(double a) {
  const double m = (a < 0.0 ? -a : a) * 0x1p72;
  const double q0 = floor(m * 0x1p-48);
  const double r0 = m - q0 * 0x1p48;
  const double q1 = floor(r0 * 0x1p-24);
  const double q2 = floor(r0 - q1 * 0x1p24);
  const int64_t sign = a < 0.0 ? -1 : 1;
  return FixedPoint{
      {sign * static_cast<int64_t>(q0), sign * static_cast<int64_t>(q1), sign * static_cast<int64_t>(q2)}};
}

// The float64 nearest to a sum of fixed-point values (three digit sums): carries are propagated
// exactly in int64, then digit 0 (exact in float64 below 2^53, i.e. fewer than 2^29 values) and the
// fraction below it (exact: < 2^48 units of 2^-72) are added with one rounding.
ZIPML_HD double fixed_to_double(const int64_t* digit_sum) {
  int64_t d0 = digit_sum[0], d1 = digit_sum[1], d2 = digit_sum[2];
  const int64_t low2 = d2 & 0xFFFFFF;  // d2 mod 2^24, in [0, 2^24)
  d1 += (d2 - low2) / 0x1000000;
  const int64_t low1 = d1 & 0xFFFFFF;
  d0 += (d1 - low1) / 0x1000000;
  const double fraction = static_cast<double>(low1 * 0x1000000 + low2) * 0x1p-72;
  return static_cast<double>(d0) * 0x1p-24 + fraction;
}

}  // namespace zipml::cuda
