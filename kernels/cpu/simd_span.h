// The SIMD span kernels, written once over an instruction-set layer V (span_avx2.cpp: 8 lanes,
// span_avx512.cpp: 16 lanes) and bit-identical to the scalar reference of kernels/common/quantize.h:
// the same float32 operations in the same order (no FMA, IEEE division where it divides, x * (1/s)
// where it multiplies), the same interval index (any exact search of a sorted table finds the same
// one), and the same Philox words.
//
// Each variant includes this file once, after the headers below and inside its `target` region, so
// that every function here is compiled for that instruction set; everything is in an anonymous
// namespace (and templated on V, a type local to that file), so the two copies never meet at link
// time and the scalar code keeps the baseline instruction set.
//
// V provides: kLanes, kTableMax (entries of an in-register table), kLaneBlock (the block each Philox
// lane computes, see PhiloxStream::words), the vector types F (float), I (int32), M (lane mask), and
// the operations used below.
//
// Stochastic rounding decides from each element's 16-bit draw r alone, except in the rare tie of
// kernel::round_up (r = floor(frac * 2^16), probability < 2^-16), which reads a second Philox word.
// The vector code flags every lane that may be such a tie ("suspect": a superset), and recomputes
// those lanes with the scalar definition before storing the vector.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "simd_philox.h"
#include "span.h"

namespace zipml::cpu {
namespace {

// ---- locating a normalised value ------------------------------------------------------------------
//
// A Levels type finds, for a vector of normalised values v, the interval [L_j, L_j+1] of each and its
// fraction: locate exactly as kernel::locate (double sampling stores j), locate_code possibly as
// another pair with the same code j + up (quantize, fake_quantize). value gives L_(j+up) * scale.
// Where kIntegerStochastic, stochastic_code gives the stochastically rounded code directly.

template <class V>
struct Interval {
  typename V::I j;
  typename V::F frac;
  typename V::F lower, upper;  // L_j and L_j+1, for the codebooks
};

// The uniform grid of K = 2^bits points (kernel::Levels without a table), located arithmetically.
// kTabled: L_code * scale comes from an in-register table of the K products (K <= kTableMax), the
// same float products kernel::fake_quantize_value rounds; else from (2 code - (K-1)) * (1/(K-1)).
template <class V, bool kTabled>
struct GridLevels {
  using F = typename V::F;
  using I = typename V::I;
  using M = typename V::M;
  static constexpr bool kIntegerStochastic = true;
  F one, half_k_minus_1, half_k_minus_1_times_2p16, step, scale;
  I last_interval, k_minus_1, low16;
  typename V::Table scaled;

  explicit GridLevels(const SpanParams& p) {
    const int k = p.levels.count;
    one = V::set1(1.0f);
    half_k_minus_1 = V::set1(0.5f * static_cast<float>(k - 1));
    half_k_minus_1_times_2p16 = V::set1(0.5f * static_cast<float>(k - 1) * 65536.0f);
    low16 = V::set1i(0xFFFFu);
    step = V::set1(p.levels.step());
    scale = V::set1(p.scale);
    last_interval = V::set1i(static_cast<uint32_t>(k - 2));
    k_minus_1 = V::set1i(static_cast<uint32_t>(k - 1));
    if constexpr (kTabled) {
      alignas(64) float at[V::kTableMax] = {};
      for (int i = 0; i < k; ++i) at[i] = p.levels.at(i) * p.scale;
      scaled = V::load_table(at);
    }
  }

  Interval<V> locate(F v) const {
    Interval<V> at;
    const F t = V::mul(V::add(v, one), half_k_minus_1);
    at.j = V::mini(V::cvtt(t), last_interval);
    at.frac = V::sub(t, V::cvt(at.j));
    return at;
  }

  // As locate, but the last level itself (t = K-1) comes as (K-1, 0) rather than (K-2, 1): the same
  // code j + up under either rounding (1 always rounds up, 0 never), without the clamp.
  Interval<V> locate_code(F v) const {
    Interval<V> at;
    const F t = V::mul(V::add(v, one), half_k_minus_1);
    at.j = V::cvtt(t);
    at.frac = V::fraction(t);  // t - floor(t), t >= 0
    return at;
  }

  // The code j + up of stochastic rounding from the draw r, in integers, with fewer operations than
  // locate_code and round_up. T = (v + 1) * ((K-1)/2 * 2^16) is t * 2^16 exactly (scaling by a power
  // of two commutes with rounding), so with f = frac * 2^16, ceil(T) = j * 2^16 + ceil(f); and for an
  // integer r, r < f iff r < ceil(f). Hence D = ceil(T) - r + 2^16 - 1 gives D >> 16 = j + [r < f],
  // kernel::round_up wherever r alone decides, and t = K-1 gives K-1 as locate_code does. A tie
  // (r = floor(f) < f) has r = ceil(T) - 1 mod 2^16: D's low 16 bits are 0, so such lanes are
  // suspect. Every intermediate lies in [0, 2^24): ceil(T) <= (K-1) * 2^16 with K <= 256.
  I stochastic_code(F v, I draw, M& suspect) const {
    const I d = V::addi(V::subi(V::cvt_ceil(V::mul(V::add(v, one), half_k_minus_1_times_2p16)), draw), low16);
    suspect = V::or_mask(suspect, V::low16_zero(d));
    return V::srli16(d);
  }

  F value(const Interval<V>& at, M up) const { return value_of(V::inc_where(at.j, up)); }
  F value_of(I code) const {
    if constexpr (kTabled) return V::lookup(scaled, code);
    return V::mul(V::mul(V::cvt(V::subi(V::addi(code, code), k_minus_1)), step), scale);
  }
};

// The largest j <= K-2 with table[j] <= v, searched without branches in `searched`: table[i] for
// i <= K-2 and +Inf beyond, so that the search can probe any index below a power of two (v >=
// table[0] after clamping, and v is never NaN). Any exact search finds the scalar's j.
inline float searched_entry(const kernel::Levels& levels, int i) {
  return i <= levels.count - 2 ? levels.table[i] : __builtin_inff();
}

// Binary search steps: log2 of the smallest power of two >= K-1.
inline int search_probes(int k) {
  int probes = 0;
  while ((1 << probes) < k - 1) ++probes;
  return probes;
}

// A codebook of K <= kTableMax levels, held in registers. L_j+1 - L_j is computed as the scalar
// computes its divisor. For K = 1 (levels padded with L_0) the fraction is 0/0: NaN never rounds
// up, and the scalar's fraction 0 does not either.
template <class V>
struct CodebookLevels {
  using F = typename V::F;
  using I = typename V::I;
  using M = typename V::M;
  static constexpr bool kIntegerStochastic = false;
  typename V::Table searched, levels;
  F scale;
  int probes;

  explicit CodebookLevels(const SpanParams& p) : scale(V::set1(p.scale)), probes(search_probes(p.levels.count)) {
    const int k = p.levels.count;
    alignas(64) float s[V::kTableMax], l[V::kTableMax];
    for (int i = 0; i < V::kTableMax; ++i) {
      s[i] = searched_entry(p.levels, i);
      l[i] = p.levels.table[std::min(i, k - 1)];
    }
    searched = V::load_table(s);
    levels = V::load_table(l);
  }

  Interval<V> locate(F v) const {
    Interval<V> at;
    at.j = V::set1i(0);
    for (int p = probes - 1; p >= 0; --p) {
      const I candidate = V::addi(at.j, V::set1i(1u << p));
      at.j = V::select_i(V::le(V::lookup(searched, candidate), v), candidate, at.j);
    }
    at.lower = V::lookup(levels, at.j);
    at.upper = V::lookup(levels, V::addi(at.j, V::set1i(1)));
    at.frac = V::div(V::sub(v, at.lower), V::sub(at.upper, at.lower));
    return at;
  }

  Interval<V> locate_code(F v) const { return locate(v); }
  F value(const Interval<V>& at, M up) const { return V::mul(V::select(up, at.upper, at.lower), scale); }
};

// A codebook of up to 256 levels: the same search over an implicit binary tree (node m of depth d
// holds searched[(2m + 1) 2^(probes-1-d)]: the probe taken at that depth after the decisions m),
// each depth one in-register lookup, or a few blended ones for the deepest. L_j is the last probe
// that succeeded (or L_0) and L_j+1 the last that failed (or L_K-1): no lookup after the search.
template <class V>
struct WideCodebookLevels {
  using F = typename V::F;
  using I = typename V::I;
  using M = typename V::M;
  static constexpr bool kIntegerStochastic = false;
  static constexpr int kTableBits = V::kTableMax == 32 ? 5 : 4;
  static_assert(V::kTableMax == 1 << kTableBits);
  alignas(64) float tree[256 + V::kTableMax];  // depth d at offset 2^d - 1; padded for table loads
  F first, last, scale;
  int probes;

  explicit WideCodebookLevels(const SpanParams& p)
      : first(V::set1(p.levels.lo())), last(V::set1(p.levels.hi())), scale(V::set1(p.scale)),
        probes(search_probes(p.levels.count)) {
    for (int d = 0; d < probes; ++d)
      for (int m = 0; m < 1 << d; ++m)
        tree[(1 << d) - 1 + m] = searched_entry(p.levels, (2 * m + 1) << (probes - 1 - d));
    std::fill(tree + (1 << probes) - 1, tree + 256 + V::kTableMax, 0.0f);
  }

  // Node m of depth d, for each lane.
  F node(int d, I m) const {
    const float* nodes = tree + (1 << d) - 1;
    if (d <= kTableBits) return V::lookup(V::load_table(nodes), m);
    F parts[256 >> kTableBits];
    int count = 1 << (d - kTableBits);
    for (int s = 0; s < count; ++s) parts[s] = V::lookup(V::load_table(nodes + (s << kTableBits)), m);
    for (int bit = kTableBits; count > 1; ++bit, count >>= 1) {
      const M high = V::bit_set(m, bit);
      for (int s = 0; s < count / 2; ++s) parts[s] = V::select(high, parts[2 * s + 1], parts[2 * s]);
    }
    return parts[0];
  }

  Interval<V> locate(F v) const {
    Interval<V> at;
    at.j = V::set1i(0);
    at.lower = first;
    at.upper = V::set1(__builtin_inff());
    for (int d = 0; d < probes; ++d) {
      const F probe = node(d, at.j);
      const M ok = V::le(probe, v);
      at.j = V::inc_where(V::addi(at.j, at.j), ok);
      at.lower = V::select(ok, probe, at.lower);
      at.upper = V::select(ok, at.upper, probe);
    }
    // A last failure on the +Inf padding was at index K-1. min returns its second operand on ties,
    // so an upper bound of -0 beside a last level of +0 keeps its sign.
    at.upper = V::min(last, at.upper);
    at.frac = V::div(V::sub(v, at.lower), V::sub(at.upper, at.lower));
    return at;
  }

  Interval<V> locate_code(F v) const { return locate(v); }
  F value(const Interval<V>& at, M up) const { return V::mul(V::select(up, at.upper, at.lower), scale); }
};

// ---- the per-vector quantizer ---------------------------------------------------------------------

template <class V, class Levels, int kRounding>
struct Quantizer {
  using F = typename V::F;
  using I = typename V::I;
  using M = typename V::M;
  const Levels& levels;
  const SpanParams& params;
  F inv_scale, lo, hi, half, two_pow_16, nan;

  Quantizer(const Levels& l, const SpanParams& p)
      : levels(l),
        params(p),
        inv_scale(V::set1(p.inv_scale)),
        lo(V::set1(p.levels.lo())),
        hi(V::set1(p.levels.hi())),
        half(V::set1(0.5f)),
        two_pow_16(V::set1(65536.0f)),
        nan(V::set1(kernel::quiet_nan())) {}

  // Element `index` of stream offset + `stream`, for the scalar recomputation of a suspect lane.
  kernel::ElementDraw element_draw(uint64_t index, int stream) const {
    const uint64_t offset = params.offset + static_cast<uint64_t>(stream);
    return kernel::ElementDraw{kernel::philox_draw(params.seed, offset, index), params.seed, offset, index};
  }

  // clamp(x * (1/s), lo, hi) as kernel::normalize: max and min return their second operand when
  // the first is NaN, as the scalar ternaries do.
  F normalize(F x) const { return V::min(V::max(V::mul(x, inv_scale), lo), hi); }

  Interval<V> locate(F x) const { return levels.locate(normalize(x)); }

  // kernel::round_up from the draws r: with fi = trunc(frac * 2^16), up iff r < fi, which is exact
  // unless r = fi (suspect). A NaN fraction converts to INT_MIN: never up, never suspect.
  M round_up(F frac, I draw, M& suspect) const {
    if constexpr (kRounding == kernel::kNearest) return V::ge(frac, half);
    const I fi = V::cvtt(V::mul(frac, two_pow_16));
    suspect = V::or_mask(suspect, V::eqi(draw, fi));
    return V::lti(draw, fi);
  }

  static constexpr bool kIntegerStochastic = kRounding == kernel::kStochastic && Levels::kIntegerStochastic;

  I code(F x, I draw, M& suspect) const {
    if constexpr (kIntegerStochastic) return levels.stochastic_code(normalize(x), draw, suspect);
    const Interval<V> at = levels.locate_code(normalize(x));
    return V::inc_where(at.j, round_up(at.frac, draw, suspect));
  }

  // kernel::fake_quantize_value (the scale is valid: the drivers check it per group).
  F fake(F x, I draw, M& suspect) const {
    if constexpr (kIntegerStochastic) {
      return V::select(V::not_finite(x), nan, levels.value_of(code(x, draw, suspect)));
    }
    const Interval<V> at = levels.locate_code(normalize(x));
    return V::select(V::not_finite(x), nan, levels.value(at, round_up(at.frac, draw, suspect)));
  }
};

// Calls f(l) for each lane l set in `bits`.
template <class F>
inline void for_each_lane(unsigned bits, F&& f) {
  for (; bits != 0; bits &= bits - 1) f(__builtin_ctz(bits));
}

// v (lanes of type T: float for V::F, uint32_t for V::I) with its lanes in `lanes` replaced by
// scalar(l): the suspect lanes, recomputed by the scalar definition. Out of line and cold, so that
// the hot loops keep their registers.
template <class V, class T, class Vec, class Scalar>
__attribute__((noinline, cold)) Vec recompute_lanes(Vec v, unsigned lanes, Scalar&& scalar) {
  constexpr bool kFloat = std::is_same_v<T, float>;
  alignas(64) T lane[V::kLanes];
  if constexpr (kFloat) {
    V::store(lane, v);
  } else {
    V::storei(lane, v);
  }
  for_each_lane(lanes, [&](int l) { lane[l] = static_cast<T>(scalar(l)); });
  if constexpr (kFloat) {
    return V::load(lane);
  } else {
    return V::loadi(lane);
  }
}

// ---- span loops -----------------------------------------------------------------------------------

// Inputs are prefetched this many elements (4 KB) ahead, after a batch's Philox words and before its
// loads, on Intel processors only (prefetch_inputs). Measured on 2^26 floats, AVX-512:
// - 2-core Xeon: the hardware prefetcher alone left this loop, heavy in arithmetic, waiting on
//   memory; prefetching took stochastic fake_quantize from 8.6 to 10.5 GB/s on one thread and from
//   17 to 20 on two (prefetching before the words, 2 KB ahead, or with a hint that bypasses the
//   caches gained less).
// - 2-core AMD EPYC (Zen 4): the same prefetch slowed it down, interleaved runs of each, medians:
//   4-bit stochastic 17.1 -> 15.9 ms on two threads (14 runs each; 1 bit 16.8 -> 15.2, 8 bits 16.4 ->
//   14.7, nearest 11.2 -> 10.7), 31.0-34.5 -> 27.9-31.8 ms on one; 16 KB or 64 KB ahead did not help.
constexpr int64_t kPrefetchAhead = 1024;

inline bool prefetch_inputs() {
  static const bool intel = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("intel") != 0;
  }();
  return intel;
}

template <int64_t kElements>
inline void prefetch_input(const float* at) {
  for (int64_t e = 0; e < kElements; e += 64 / sizeof(float)) __builtin_prefetch(at + e, 0, 3);
}

// Runs op over the n elements that start at stream index `first`, in chunks of 8 * kLanes elements
// aligned to Philox blocks (one vector of 4 * kLanes words per stream per chunk, two draws a word;
// one stream draws two chunks' at once). The chunks cut by the span's ends go through the op's
// staging buffers; the loop between them runs on the tensor in place.
template <class V, int kStreams, class Op>
void for_each_chunk(Op& op, int64_t n, uint64_t first, const SpanParams& p) {
  using I = typename V::I;
  constexpr int64_t kChunk = 8 * V::kLanes;
  constexpr int kBatch = kStreams == 1 ? 2 : 1;
  if (n <= 0) return;
  PhiloxStream<V> streams[kStreams > 0 ? kStreams : 1];  // stream s: offset + s
  for (int s = 0; s < kStreams; ++s) streams[s].init(p.seed, p.offset + s);
  I words[kBatch][2][4];  // [chunk of the batch][stream][vector]
  if constexpr (kStreams == 0)  // nearest rounding draws no random words
    for (I& w : words[0][0]) w = V::set1i(0);
  int64_t i = -static_cast<int64_t>(first & 7);  // element index of the chunk's first draw
  uint64_t block = first >> 3;
  if (i < 0 || n < kChunk) {
    for (int s = 0; s < kStreams; ++s) streams[s].template words<1>(block, words, s);
    op.partial(i, -i, std::min<int64_t>(n - i, kChunk), words[0]);
    i += kChunk;
    block += V::kLanes;
  }
  const bool prefetch = prefetch_inputs();
  for (; i + kBatch * kChunk <= n; i += kBatch * kChunk, block += kBatch * V::kLanes) {
    for (int s = 0; s < kStreams; ++s) streams[s].template words<kBatch>(block, words, s);
    if (prefetch && i + kPrefetchAhead < n) prefetch_input<kBatch * kChunk>(op.x + i + kPrefetchAhead);
    for (int b = 0; b < kBatch; ++b) op.chunk(i + b * kChunk, words[b]);
  }
  for (; i < n; i += kChunk, block += V::kLanes) {
    for (int s = 0; s < kStreams; ++s) streams[s].template words<1>(block, words, s);
    if (i + kChunk <= n) {
      op.chunk(i, words[0]);
    } else {
      op.partial(i, 0, n - i, words[0]);
    }
  }
}

// Draw vector r (0..7) of a chunk from its 4 word vectors.
template <class V>
inline typename V::I chunk_draws(const typename V::I (&words)[4], int r) {
  return V::draws(words[r >> 1], r & 1);
}

// A chunk's 8 result vectors: value(r, suspect) computes vector r and flags its suspect lanes,
// fix(r, v, lanes) recomputes those, store(r, v) writes it. Ties are rare, so the suspects are checked
// once per chunk, and all 8 vectors are stored after it.
template <class V, class T, class Value, class Fix, class Store>
inline void chunk_vectors(Value&& value, Fix&& fix, Store&& store) {
  using M = typename V::M;
  T v[8];
  M suspect[8];
  M any = V::no_lanes();
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r) {
    suspect[r] = V::no_lanes();
    v[r] = value(r, suspect[r]);
    any = V::or_mask(any, suspect[r]);
  }
  if (__builtin_expect(V::lane_bits(any) != 0, 0)) {
    for (int r = 0; r < 8; ++r)
      if (const unsigned lanes = V::lane_bits(suspect[r])) v[r] = fix(r, v[r], lanes);
  }
#pragma GCC unroll 8
  for (int r = 0; r < 8; ++r) store(r, v[r]);
}

// Each op runs a chunk's 8 vectors on xs (element `index` of the stream first), in place or staged.
template <class V, class Levels, int kRounding>
struct FakeQuantizeOp {
  using F = typename V::F;
  using I = typename V::I;
  using M = typename V::M;
  static constexpr int kChunk = 8 * V::kLanes;
  const Quantizer<V, Levels, kRounding> q;
  const float* x;
  float* out;
  uint64_t first;
  bool stream;

  template <bool kStream>
  void run(const float* xs, float* os, const I (*words)[4], uint64_t index) const {
    chunk_vectors<V, F>(
        [&](int r, M& suspect) { return q.fake(V::load(xs + r * V::kLanes), chunk_draws<V>(words[0], r), suspect); },
        [&](int r, F v, unsigned lanes) {
          const SpanParams& p = q.params;
          return recompute_lanes<V, float>(v, lanes, [&, at = r * V::kLanes](int l) {
            return kernel::fake_quantize_value(xs[at + l], p.scale, p.inv_scale, p.levels, p.rounding,
                                               q.element_draw(index + at + l, 0));
          });
        },
        [&](int r, F v) {
          if constexpr (kStream) {
            V::stream(os + r * V::kLanes, v);
          } else {
            V::store(os + r * V::kLanes, v);
          }
        });
  }
  void chunk(int64_t i, const I (*words)[4]) const {
    if (stream && reinterpret_cast<uintptr_t>(out + i) % (V::kLanes * sizeof(float)) == 0) {
      run<true>(x + i, out + i, words, first + i);
    } else {
      run<false>(x + i, out + i, words, first + i);
    }
  }
  void partial(int64_t i, int64_t a, int64_t b, const I (*words)[4]) const {
    alignas(64) float xs[kChunk] = {};
    alignas(64) float os[kChunk];
    std::memcpy(xs + a, x + i + a, (b - a) * sizeof(float));
    run<false>(xs, os, words, first + i);
    std::memcpy(out + i + a, os + a, (b - a) * sizeof(float));
  }

  // Not inlined: each kind of levels and rounding keeps its own function and register allocation.
  __attribute__((noinline)) static bool apply(const Levels& levels, const float* x, float* out, int64_t n,
                                              uint64_t first, const SpanParams& p) {
    FakeQuantizeOp op{Quantizer<V, Levels, kRounding>(levels, p), x, out, first, p.stream_out};
    for_each_chunk<V, kRounding == kernel::kNearest ? 0 : 1>(op, n, first, p);
    if (op.stream) V::stream_fence();  // the streamed lines are visible before the op returns
    return true;
  }
};

template <class V, class Levels, int kRounding>
struct QuantizeOp {
  using I = typename V::I;
  using M = typename V::M;
  static constexpr int kChunk = 8 * V::kLanes;
  const Quantizer<V, Levels, kRounding> q;
  const float* x;
  uint8_t* codes;
  uint64_t first;
  M finite;

  void run(const float* xs, uint8_t* cs, const I (*words)[4], uint64_t index) {
    chunk_vectors<V, I>(
        [&](int r, M& suspect) {
          const typename V::F xv = V::load(xs + r * V::kLanes);
          finite = V::and_not(finite, V::not_finite(xv));
          return q.code(xv, chunk_draws<V>(words[0], r), suspect);
        },
        [&](int r, I code, unsigned lanes) {
          const SpanParams& p = q.params;
          return recompute_lanes<V, uint32_t>(code, lanes, [&, at = r * V::kLanes](int l) {
            return kernel::quantize_code(xs[at + l], p.inv_scale, p.levels, p.rounding,
                                         q.element_draw(index + at + l, 0));
          });
        },
        [&](int r, I code) { V::store_bytes(cs + r * V::kLanes, code); });
  }
  void chunk(int64_t i, const I (*words)[4]) { run(x + i, codes + i, words, first + i); }
  void partial(int64_t i, int64_t a, int64_t b, const I (*words)[4]) {
    alignas(64) float xs[kChunk] = {};  // zeros: finite
    alignas(64) uint8_t cs[kChunk];
    std::memcpy(xs + a, x + i + a, (b - a) * sizeof(float));
    run(xs, cs, words, first + i);
    std::memcpy(codes + i + a, cs + a, b - a);
  }

  __attribute__((noinline)) static bool apply(const Levels& levels, const float* x, uint8_t* codes, int64_t n,
                                              uint64_t first, const SpanParams& p) {
    QuantizeOp op{Quantizer<V, Levels, kRounding>(levels, p), x, codes, first, V::all_lanes()};
    for_each_chunk<V, kRounding == kernel::kNearest ? 0 : 1>(op, n, first, p);
    return V::all(op.finite);
  }
};

// Double sampling: the interval index once, and the round-up bits of two independent stochastic
// samples (streams offset and offset + 1) in bits 0 and 1.
template <class V, class Levels, int>
struct DoubleSampleOp {
  using F = typename V::F;
  using I = typename V::I;
  using M = typename V::M;
  static constexpr int kChunk = 8 * V::kLanes;
  const Quantizer<V, Levels, kernel::kStochastic> q;
  const float* x;
  uint8_t* index;
  uint8_t* up;
  uint64_t first;
  M finite;

  void run(const float* xs, uint8_t* is, uint8_t* us, const I (*words)[4], uint64_t index) {
    chunk_vectors<V, I>(
        [&](int r, M& suspect) {
          const F xv = V::load(xs + r * V::kLanes);
          finite = V::and_not(finite, V::not_finite(xv));
          const Interval<V> iv = q.locate(xv);
          V::store_bytes(is + r * V::kLanes, iv.j);
          return V::ori(V::bit_where(q.round_up(iv.frac, chunk_draws<V>(words[0], r), suspect), 1),
                        V::bit_where(q.round_up(iv.frac, chunk_draws<V>(words[1], r), suspect), 2));
        },
        [&](int r, I bits, unsigned lanes) {
          const SpanParams& p = q.params;
          return recompute_lanes<V, uint32_t>(bits, lanes, [&, at = r * V::kLanes](int l) {
            const float frac = kernel::locate(kernel::normalize(xs[at + l], p.inv_scale, p.levels), p.levels).frac;
            return kernel::round_up(frac, kernel::kStochastic, q.element_draw(index + at + l, 0)) |
                   kernel::round_up(frac, kernel::kStochastic, q.element_draw(index + at + l, 1)) << 1;
          });
        },
        [&](int r, I bits) { V::store_bytes(us + r * V::kLanes, bits); });
  }
  void chunk(int64_t i, const I (*words)[4]) { run(x + i, index + i, up + i, words, first + i); }
  void partial(int64_t i, int64_t a, int64_t b, const I (*words)[4]) {
    alignas(64) float xs[kChunk] = {};
    alignas(64) uint8_t is[kChunk], us[kChunk];
    std::memcpy(xs + a, x + i + a, (b - a) * sizeof(float));
    run(xs, is, us, words, first + i);
    std::memcpy(index + i + a, is + a, b - a);
    std::memcpy(up + i + a, us + a, b - a);
  }

  __attribute__((noinline)) static bool apply(const Levels& levels, const float* x, uint8_t* index, uint8_t* up,
                                              int64_t n, uint64_t first, const SpanParams& p) {
    DoubleSampleOp op{Quantizer<V, Levels, kernel::kStochastic>(levels, p), x, index, up, first, V::all_lanes()};
    for_each_chunk<V, 2>(op, n, first, p);
    return V::all(op.finite);
  }
};

// ---- dispatch on the kind of levels and the rounding ------------------------------------------------

template <class V, template <class, class, int> class Op, class Levels, class... Args>
bool with_rounding(const Levels& levels, int rounding, Args... args) {
  if (rounding == kernel::kNearest) return Op<V, Levels, kernel::kNearest>::apply(levels, args...);
  return Op<V, Levels, kernel::kStochastic>::apply(levels, args...);
}

template <class V, template <class, class, int> class Op, class... Args>
bool with_levels(const SpanParams& p, int rounding, Args... args) {
  const kernel::Levels& levels = p.levels;
  if (levels.table == nullptr) {
    if (levels.count <= V::kTableMax) return with_rounding<V, Op>(GridLevels<V, true>(p), rounding, args..., p);
    return with_rounding<V, Op>(GridLevels<V, false>(p), rounding, args..., p);
  }
  if (levels.count <= V::kTableMax) return with_rounding<V, Op>(CodebookLevels<V>(p), rounding, args..., p);
  return with_rounding<V, Op>(WideCodebookLevels<V>(p), rounding, args..., p);
}

// Spans shorter than this run the scalar reference: a vector chunk's set-up (round keys, tables,
// a whole Philox vector for a few blocks) costs more than it saves on a few elements (rows of 3:
// 2-3x slower than scalar), and the bits are the same either way.
constexpr int64_t kShortSpan = 16;

template <class V>
void fake_quantize_span(const float* x, float* out, int64_t n, uint64_t first, const SpanParams& p) {
  if (n < kShortSpan) return scalar_span_kernels().fake_quantize(x, out, n, first, p);
  with_levels<V, FakeQuantizeOp>(p, p.rounding, x, out, n, first);
}

template <class V>
bool quantize_span(const float* x, uint8_t* codes, int64_t n, uint64_t first, const SpanParams& p) {
  if (n < kShortSpan) return scalar_span_kernels().quantize(x, codes, n, first, p);
  return with_levels<V, QuantizeOp>(p, p.rounding, x, codes, n, first);
}

template <class V>
bool double_sample_span(const float* x, uint8_t* index, uint8_t* up, int64_t n, uint64_t first,
                        const SpanParams& p) {
  if (n < kShortSpan) return scalar_span_kernels().double_sample(x, index, up, n, first, p);
  return with_levels<V, DoubleSampleOp>(p, kernel::kStochastic, x, index, up, n, first);
}

}  // namespace
}  // namespace zipml::cpu
