// The per-element arithmetic of kernels/common/quantize.h against a naive reference: levels,
// normalisation, the interval search (arithmetic for the uniform grid, binary search for a table),
// nearest rounding = argmin, and the exact round-up probability of stochastic rounding, which makes
// E[L_code] = v up to the 2^-48 resolution of the uniform draw (ZipML, Section 2).
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <limits>
#include <random>

#include "kernels/common/quantize.h"
#include "reference.h"

namespace {

namespace k = zipml::kernel;

std::vector<double> levels_as_double(const k::Levels& levels) {
  std::vector<double> out;
  for (int i = 0; i < levels.count; ++i) out.push_back(levels.at(i));
  return out;
}

// A random sorted codebook of `count` distinct floats in [-1, 1].
std::vector<float> random_table(int count, std::mt19937& gen) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> t;
  while (int(t.size()) < count) {
    t.push_back(u(gen));
    std::sort(t.begin(), t.end());
    t.erase(std::unique(t.begin(), t.end()), t.end());
  }
  return t;
}

// Values to locate: random points, every level, and points just beside and between levels.
std::vector<float> probe_values(const std::vector<double>& L, std::mt19937& gen) {
  std::uniform_real_distribution<float> u(float(L.front()), float(L.back()));
  std::vector<float> v;
  for (int i = 0; i < 500; ++i) v.push_back(u(gen));
  for (size_t i = 0; i < L.size(); ++i) {
    const float l = float(L[i]);
    v.push_back(l);
    if (i > 0) v.push_back(std::nextafter(l, -2.0f));
    if (i + 1 < L.size()) {
      v.push_back(std::nextafter(l, 2.0f));
      v.push_back(float(0.5 * (L[i] + L[i + 1])));
    }
  }
  return v;
}

// Round-ups over every (draw r, tie word w), times 2^-48. With f = frac * 2^16 in float64: every draw
// but the tie floor(f) (when f is not an integer) decides alone, and the tie rounds up for the tie
// words below c = ceil((f - floor f) * 2^32), checked on both sides of c.
double round_up_probability(float frac) {
  const double f = double(frac) * 65536.0;
  const bool has_tie = f == f && f != std::floor(f);
  const uint32_t tie = has_tie ? uint32_t(std::floor(f)) : UINT32_MAX;
  int64_t decided = 0;
  for (uint32_t r = 0; r < (1u << 16); ++r)
    if (r != tie) decided += k::round_up(frac, k::kStochastic, k::ElementDraw{r});
  uint64_t c = 0;
  if (has_tie) {
    c = uint64_t(std::ceil((f - tie) * 4294967296.0));
    EXPECT_GT(c, 0u);
    EXPECT_LT(c, uint64_t{1} << 32);
    EXPECT_EQ(k::tie_rounds_up(frac, tie, uint32_t(c - 1)), 1) << "frac " << frac;
    EXPECT_EQ(k::tie_rounds_up(frac, tie, uint32_t(c)), 0) << "frac " << frac;
    EXPECT_EQ(k::tie_rounds_up(frac, tie, 0u), 1);
    EXPECT_EQ(k::tie_rounds_up(frac, tie, UINT32_MAX), 0);
  }
  return std::ldexp(double(decided) * 4294967296.0 + double(c), -48);
}

TEST(QuantizeMath, UniformGridEndpointsAndSpacing) {
  for (int bits = 1; bits <= 8; ++bits) {
    const k::Levels grid{nullptr, 1 << bits};
    EXPECT_EQ(grid.at(0), -1.0f);
    EXPECT_EQ(grid.at(grid.count - 1), 1.0f);
    EXPECT_EQ(grid.lo(), -1.0f);
    EXPECT_EQ(grid.hi(), 1.0f);
    for (int i = 0; i < grid.count; ++i) {
      EXPECT_NEAR(grid.at(i), -1.0 + 2.0 * i / (grid.count - 1), 2 * FLT_EPSILON) << bits << " bits, level " << i;
      EXPECT_EQ(grid.at(i), -grid.at(grid.count - 1 - i)) << "symmetric";
    }
  }
}

TEST(QuantizeMath, NormalizeClampsToTheLevelRange) {
  const float table[] = {-0.5f, 0.25f, 0.75f};
  const k::Levels t{table, 3}, u{nullptr, 4};
  EXPECT_EQ(k::normalize(3.0f, 0.5f, u), 1.0f);
  EXPECT_EQ(k::normalize(-3.0f, 0.5f, u), -1.0f);
  EXPECT_EQ(k::normalize(1.0f, 0.5f, u), 0.5f);
  EXPECT_EQ(k::normalize(-1.0f, 1.0f, t), -0.5f);
  EXPECT_EQ(k::normalize(1.0f, 1.0f, t), 0.75f);
  EXPECT_EQ(k::normalize(0.3f, 1.0f, t), 0.3f);
  EXPECT_EQ(k::normalize(5.0f, 0.0f, u), 0.0f) << "a zero scale quantizes v = 0";
}

TEST(QuantizeMath, InverseScaleAndValidity) {
  EXPECT_EQ(k::inverse_scale(2.0f), 0.5f);
  EXPECT_EQ(k::inverse_scale(0.0f), 0.0f);
  EXPECT_EQ(k::inverse_scale(1e-40f), 0.0f) << "1/s overflows";
  EXPECT_EQ(k::inverse_scale(std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_TRUE(k::valid_scale(0.0f));
  EXPECT_TRUE(k::valid_scale(FLT_MAX));
  EXPECT_FALSE(k::valid_scale(-1.0f));
  EXPECT_FALSE(k::valid_scale(std::numeric_limits<float>::infinity()));
  EXPECT_FALSE(k::valid_scale(std::numeric_limits<float>::quiet_NaN()));
}

// Uniform grid: the arithmetic search may land one interval off only at a level itself (frac ~ 1
// below it or ~ 0 above it); either way the point it names is v.
TEST(QuantizeMath, LocateOnUniformGridMatchesLinearScan) {
  std::mt19937 gen(11);
  for (int count : {2, 3, 4, 5, 16, 17, 100, 256}) {
    const k::Levels grid{nullptr, count};
    const std::vector<double> L = levels_as_double(grid);
    for (float v : probe_values(L, gen)) {
      const k::Interval at = k::locate(v, grid);
      const int j = zipml::reference::interval_of(v, L);
      ASSERT_GE(at.index, 0);
      ASSERT_LE(at.index, count - 2);
      ASSERT_GE(at.frac, 0.0f);
      ASSERT_LE(at.frac, 1.0f);
      const bool same = at.index == j;
      const bool below = at.index == j - 1 && at.frac > 1.0f - 1e-5f;
      const bool above = at.index == j + 1 && at.frac < 1e-5f;
      ASSERT_TRUE(same || below || above) << "K=" << count << " v=" << v << " index " << at.index << " want " << j;
      const double point = L[at.index] + at.frac * (L[at.index + 1] - L[at.index]);
      ASSERT_NEAR(point, v, 4e-7) << "K=" << count << " v=" << v;
    }
  }
}

// A table: binary search and linear scan use the same predicate, so the index agrees exactly.
TEST(QuantizeMath, LocateInTableMatchesLinearScan) {
  std::mt19937 gen(12);
  for (int count : {2, 3, 4, 7, 16, 200}) {
    for (int trial = 0; trial < 5; ++trial) {
      const std::vector<float> table = random_table(count, gen);
      const k::Levels levels{table.data(), count};
      const std::vector<double> L = levels_as_double(levels);
      for (float v : probe_values(L, gen)) {
        const k::Interval at = k::locate(v, levels);
        const int j = zipml::reference::interval_of(v, L);
        ASSERT_EQ(at.index, j) << "K=" << count << " v=" << v;
        ASSERT_NEAR(at.frac, (v - L[j]) / (L[j + 1] - L[j]), 1e-6) << "K=" << count << " v=" << v;
      }
    }
  }
}

// Nearest rounding picks the closest level (ties, and float near-ties, may pick either neighbour;
// exact ties round up).
TEST(QuantizeMath, NearestRoundingIsArgmin) {
  std::mt19937 gen(13);
  for (int count : {2, 4, 16, 256}) {
    for (bool uniform : {true, false}) {
      const std::vector<float> table = random_table(count, gen);
      const k::Levels levels{uniform ? nullptr : table.data(), count};
      const std::vector<double> L = levels_as_double(levels);
      for (float v : probe_values(L, gen)) {
        const int code = k::quantize_code(v, 1.0f, levels, k::kNearest, k::ElementDraw{});
        const int best = zipml::reference::nearest_level(v, L);
        if (code == best) continue;
        const double gap = std::abs(std::abs(L[code] - v) - std::abs(L[best] - v));
        ASSERT_LT(gap, 1e-6 * (L.back() - L.front())) << "K=" << count << " v=" << v << " code " << code;
      }
    }
  }
  const float table[] = {-1.0f, 0.0f, 1.0f};
  EXPECT_EQ(k::quantize_code(0.5f, 1.0f, k::Levels{table, 3}, k::kNearest, k::ElementDraw{}), 2) << "ties round up";
  EXPECT_EQ(k::quantize_code(-0.5f, 1.0f, k::Levels{table, 3}, k::kNearest, k::ElementDraw{}), 1) << "ties round up";
}

// Over all 2^48 (draw, tie word) pairs, stochastic rounding rounds up exactly ceil(frac * 2^48) times:
// the probability is frac itself for every float frac >= 2^-24, and within 2^-48 of it below.
TEST(QuantizeMath, StochasticRoundUpProbabilityIsFrac) {
  for (float frac : {0.0f, 1e-30f, 1e-7f, 0.25f, 0.3f, 0.5f, std::nextafter(0.5f, 0.0f), 0.7071f,
                     1.0f - 1e-7f, 1.0f}) {
    EXPECT_EQ(round_up_probability(frac), std::ldexp(std::ceil(std::ldexp(double(frac), 48)), -48)) << frac;
    if (frac >= std::ldexp(1.0f, -24)) EXPECT_EQ(round_up_probability(frac), double(frac)) << frac;
  }
  EXPECT_EQ(round_up_probability(std::numeric_limits<float>::quiet_NaN()), 0.0) << "NaN never rounds up";
}

// The tie word of element i is word 2^63 + i of its stream, and decides exactly the ties.
TEST(QuantizeMath, TieWordDecidesTies) {
  int ups = 0;
  for (uint64_t i = 0; i < 2000; ++i) {
    const k::ElementDraw d{k::philox_draw(5, 9, i), 5, 9, i};
    EXPECT_EQ(d.tie_word(), k::philox_word(5, 9, (uint64_t{1} << 63) + i));
    const float tie = (float(d.r) + 0.5f) * std::ldexp(1.0f, -16);  // halfway: up iff w < 2^31
    ASSERT_EQ(k::round_up(tie, k::kStochastic, d), int(d.tie_word() < (1u << 31))) << i;
    ups += k::round_up(tie, k::kStochastic, d);
    if (d.r > 0) EXPECT_EQ(k::round_up(float(d.r) * std::ldexp(1.0f, -16), k::kStochastic, d), 0);
    EXPECT_EQ(k::round_up(float(d.r + 1) * std::ldexp(1.0f, -16), k::kStochastic, d), 1);
  }
  EXPECT_GT(ups, 900);  // Binomial(2000, 1/2): 1000 +- 22
  EXPECT_LT(ups, 1100);
}

// Hence E[L_code] = v, computed exactly (no sampling) from the round-up probability.
TEST(QuantizeMath, StochasticRoundingExpectationIsTheValue) {
  std::mt19937 gen(14);
  for (int count : {2, 4, 16, 256}) {
    for (bool uniform : {true, false}) {
      const std::vector<float> table = random_table(count, gen);
      const k::Levels levels{uniform ? nullptr : table.data(), count};
      const std::vector<double> L = levels_as_double(levels);
      for (float v : probe_values(L, gen)) {
        const k::Interval at = k::locate(k::normalize(v, 1.0f, levels), levels);
        const double p_up = std::ldexp(std::ceil(std::ldexp(double(at.frac), 48)), -48);
        const double expectation = L[at.index] + p_up * (L[at.index + 1] - L[at.index]);
        const double width = L[at.index + 1] - L[at.index];
        ASSERT_NEAR(expectation, v, width * std::ldexp(1.0, -48) + 4e-7) << "K=" << count << " v=" << v;
      }
    }
  }
}

// The code follows the draw: up iff r * 2^-16 < frac (f = frac * 2^16 an integer: no tie); nearest
// ignores it.
TEST(QuantizeMath, CodeFollowsTheRandomDraw) {
  const k::Levels grid{nullptr, 4};  // levels -1, -1/3, 1/3, 1
  const float v = 0.0f;              // interval 1, frac 1/2
  EXPECT_EQ(k::quantize_code(v, 1.0f, grid, k::kStochastic, k::ElementDraw{0x7fffu}), 1 + 1);
  EXPECT_EQ(k::quantize_code(v, 1.0f, grid, k::kStochastic, k::ElementDraw{0x8000u}), 1);
  EXPECT_EQ(k::quantize_code(v, 1.0f, grid, k::kNearest, k::ElementDraw{0xffffu}), 2);
  EXPECT_EQ(k::quantize_code(v, 1.0f, grid, k::kNearest, k::ElementDraw{}), 2);
}

TEST(QuantizeMath, FakeQuantizeValueDefinesNonFiniteBehaviour) {
  const k::Levels grid{nullptr, 16};
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(k::fake_quantize_value(nan, 1.0f, 1.0f, grid, k::kNearest, k::ElementDraw{})));
  EXPECT_TRUE(std::isnan(k::fake_quantize_value(inf, 1.0f, 1.0f, grid, k::kNearest, k::ElementDraw{})));
  EXPECT_TRUE(std::isnan(k::fake_quantize_value(-inf, 1.0f, 1.0f, grid, k::kNearest, k::ElementDraw{})));
  EXPECT_TRUE(std::isnan(k::fake_quantize_value(0.5f, inf, 0.0f, grid, k::kNearest, k::ElementDraw{})));
  EXPECT_TRUE(std::isnan(k::fake_quantize_value(0.5f, -1.0f, -1.0f, grid, k::kNearest, k::ElementDraw{})));
  EXPECT_EQ(k::fake_quantize_value(0.5f, 0.0f, 0.0f, grid, k::kNearest, k::ElementDraw{}), 0.0f) << "all-zero group";
  // A valid value: L[code] * s, clamped to the range.
  EXPECT_EQ(k::fake_quantize_value(3.0f, 2.0f, 0.5f, grid, k::kNearest, k::ElementDraw{}), 2.0f);
  EXPECT_EQ(k::fake_quantize_value(-9.0f, 2.0f, 0.5f, grid, k::kStochastic, k::ElementDraw{}), -2.0f);
}

TEST(QuantizeMath, IntervalBitsIsCeilLog2OfIntervals) {
  for (int count = 2; count <= 256; ++count)
    EXPECT_EQ(k::interval_bits(count), int(std::ceil(std::log2(double(count - 1)) - 1e-12))) << count;
}

}  // namespace
