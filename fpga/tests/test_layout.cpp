// The host's data: the double-sampled codes (the project's quantizer, the linear store's streams),
// the 512-bit line layout and the model lines.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "fpga/host/layout.h"
#include "kernels/common/philox.h"
#include "kernels/common/quantize.h"

#ifdef ZIPML_FPGA_WITH_LINEAR
#include "store.h"
#endif

using namespace zipml::fpga;

namespace {

std::vector<float> uniform_matrix(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (float& v : x) v = u(g);
  for (int64_t i = 0; i < rows * cols; i += 17) x[i] = (i / 17) % 3 - 1.0f;  // the grid's ends and 0 too
  return x;
}

// Element i of stream (seed, stream) as kernel::quantize_code reads it.
zipml::kernel::ElementDraw element(uint64_t seed, uint64_t stream, uint64_t i) {
  return {zipml::kernel::philox_draw(seed, stream, i), seed, stream, i};
}

TrainingData make_data(int bits, int64_t rows, int64_t cols, int copies, uint32_t seed) {
  std::mt19937 g(seed);
  TrainingData d;
  d.bits = bits;
  d.rows = rows;
  d.cols = cols;
  d.copies = bits == kFloatBits ? 1 : copies;
  d.labels.resize(rows);
  for (int32_t& l : d.labels) l = static_cast<int32_t>(g());
  if (bits == kFloatBits) {
    d.values = uniform_matrix(rows, cols, seed + 1);
  } else {
    for (auto& c : d.codes) {
      c.resize(static_cast<size_t>(d.copies * rows * cols));
      for (uint8_t& v : c) v = static_cast<uint8_t>(g() & ((1u << bits) - 1));
    }
  }
  return d;
}

template <int Q>
void expect_layout(const TrainingData& d) {
  using F = Format<Q>;
  const std::vector<Line> lines = pack_lines(d);
  const int64_t R = F::lines_per_row(d.cols);
  ASSERT_EQ(static_cast<int64_t>(lines.size()), d.copies * d.rows * R);
  for (int c = 0; c < d.copies; ++c)
    for (int64_t r = 0; r < d.rows; ++r) {
      const Line* row = lines.data() + (c * d.rows + r) * R;
      for (int64_t slot = 0; slot < R * F::kPerLine; ++slot) {
        const Line& line = row[slot / F::kPerLine];
        const int s = static_cast<int>(slot % F::kPerLine);
        if (slot < d.cols) {
          for (int sample = 0; sample < F::kSamples; ++sample)
            ASSERT_EQ(F::term(line, s, sample), d.term(c, r, slot, sample))
                << "copy " << c << " row " << r << " slot " << slot;
        } else if (slot < R * F::kPerLine - F::kLabelSlots) {
          ASSERT_EQ(line.get(F::kSlotBits * s, F::kSlotBits), 0u) << "padding slot " << slot;  // zero padding
        }
      }
      ASSERT_EQ(static_cast<int32_t>(row[R - 1].slot32(15)), d.labels[r]);  // the label's fixed slot
    }
}

}  // namespace

TEST(Layout, LinesPerRow) {
  // the label takes the top 32 bits of the row's last line: 1 float slot, 2 slots at 8 bits, 16 at 1 bit
  EXPECT_EQ(lines_per_row(kFloatBits, 15), 1);
  EXPECT_EQ(lines_per_row(kFloatBits, 16), 2);
  EXPECT_EQ(lines_per_row(kFloatBits, 90), 6);  // YearPrediction: 90 features + label
  EXPECT_EQ(lines_per_row(kFloatBits, 100), 7);
  EXPECT_EQ(lines_per_row(kFloatBits, 5000), 313);  // gisette
  EXPECT_EQ(lines_per_row(8, 30), 1);
  EXPECT_EQ(lines_per_row(8, 31), 2);
  EXPECT_EQ(lines_per_row(8, 90), 3);
  EXPECT_EQ(lines_per_row(4, 60), 1);
  EXPECT_EQ(lines_per_row(4, 61), 2);
  EXPECT_EQ(lines_per_row(2, 100), 1);
  EXPECT_EQ(lines_per_row(2, 120), 1);
  EXPECT_EQ(lines_per_row(2, 121), 2);
  EXPECT_EQ(lines_per_row(1, 240), 1);
  EXPECT_EQ(lines_per_row(1, 241), 2);
  EXPECT_EQ(lines_per_row(1, 5000), 20);
  EXPECT_THROW(lines_per_row(3, 10), std::invalid_argument);
}

TEST(Layout, PackedLinesDecodeToTheData) {
  for (int64_t cols : {1, 7, 14, 15, 16, 29, 30, 31, 60, 61, 120, 121, 240, 241, 300, 600}) {
    expect_layout<kFloatBits>(make_data(kFloatBits, 5, cols, 1, static_cast<uint32_t>(cols)));
    expect_layout<8>(make_data(8, 5, cols, 2, static_cast<uint32_t>(cols) + 1));
    expect_layout<4>(make_data(4, 5, cols, 2, static_cast<uint32_t>(cols) + 2));
    expect_layout<2>(make_data(2, 5, cols, 3, static_cast<uint32_t>(cols) + 3));
    expect_layout<1>(make_data(1, 5, cols, 2, static_cast<uint32_t>(cols) + 4));
  }
}

TEST(Layout, ModelLinesRoundTrip) {
  for (int64_t cols : {1, 15, 16, 100}) {
    std::vector<int32_t> w(cols + 1);
    for (int64_t k = 0; k <= cols; ++k) w[k] = static_cast<int32_t>(k * 7919 - 1000);
    EXPECT_EQ(unpack_models(pack_model(w.data(), cols), cols, 1), w);
    EXPECT_EQ(static_cast<int64_t>(pack_model(w.data(), cols).size()), model_lines(cols));
  }
}

TEST(Layout, CodesAreTheCoresDoubleSampling) {
  // The slow definition: the core's quantize_code at scale 1 with element r cols + k of stream
  // 2 realisation + sample (linear/store.h with samples = 2).
  const int64_t rows = 23, cols = 13;
  const std::vector<float> u = uniform_matrix(rows, cols, 9);
  for (int bits : {1, 2, 4, 8}) {
    std::vector<uint8_t> codes[2];
    quantize_double_sampled(u.data(), rows, cols, bits, 3, 42, 5, codes);
    const zipml::kernel::Levels levels{nullptr, 1 << bits};
    for (int c = 0; c < 3; ++c)
      for (int s = 0; s < 2; ++s)
        for (int64_t i = 0; i < rows * cols; ++i) {
          const zipml::kernel::ElementDraw d = element(42, static_cast<uint64_t>(5 + c) * 2 + s, i);
          const int want = zipml::kernel::quantize_code(u[i], 1.0f, levels, zipml::kernel::kStochastic, d);
          ASSERT_EQ(codes[s][c * rows * cols + i], want) << "bits " << bits << " copy " << c << " sample " << s;
        }
  }
  // naive: one stochastic sample in stream (seed, realisation); nearest: deterministic rounding
  for (int bits : {1, 4}) {
    std::vector<uint8_t> naive[2], nearest[2];
    quantize_codes(u.data(), rows, cols, bits, 2, 42, 5, Sampling::Naive, naive);
    quantize_codes(u.data(), rows, cols, bits, 1, 42, 0, Sampling::Nearest, nearest);
    const zipml::kernel::Levels levels{nullptr, 1 << bits};
    EXPECT_EQ(naive[0], naive[1]);
    EXPECT_EQ(nearest[0], nearest[1]);
    for (int c = 0; c < 2; ++c)
      for (int64_t i = 0; i < rows * cols; ++i) {
        const zipml::kernel::ElementDraw d = element(42, static_cast<uint64_t>(5 + c), i);
        ASSERT_EQ(naive[0][c * rows * cols + i],
                  zipml::kernel::quantize_code(u[i], 1.0f, levels, zipml::kernel::kStochastic, d));
        if (c == 0) {
          ASSERT_EQ(nearest[0][i], zipml::kernel::quantize_code(u[i], 1.0f, levels, zipml::kernel::kNearest, d));
        }
      }
  }
  std::vector<uint8_t> codes[2];
  std::vector<float> bad(u);
  bad[3] = 1.5f;
  EXPECT_THROW(quantize_double_sampled(bad.data(), rows, cols, 2, 1, 0, 0, codes), std::invalid_argument);
  EXPECT_THROW(quantize_double_sampled(u.data(), rows, cols, 3, 1, 0, 0, codes), std::invalid_argument);
}

TEST(Layout, TiedDrawsReadTheTieWord) {
  // 1 bit, u = -1 + k 2^-23: frac = k 2^-24 exactly, and k = 256 r + m (0 < m < 256) puts frac * 2^16
  // strictly between the draw r of the element and r + 1, so that its tie word w decides: up iff
  // w < (m / 256) 2^32. Sample 1 of realisation 5 is built to tie.
  const int64_t rows = 5, cols = 13, n = rows * cols;
  const uint64_t stream = 2 * 5 + 1;
  std::vector<float> u(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = 256 * static_cast<int64_t>(zipml::kernel::philox_draw(42, stream, i)) + 1 + i % 255;
    u[i] = static_cast<float>(-1.0 + std::ldexp(static_cast<double>(k), -23));
  }
  std::vector<uint8_t> codes[2];
  quantize_double_sampled(u.data(), rows, cols, 1, 1, 42, 5, codes);
  int ups = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t m = 1 + i % 255;
    ASSERT_EQ(codes[1][i], zipml::kernel::philox_tie_word(42, stream, i) < (m << 24) ? 1 : 0) << i;
    ups += codes[1][i];
  }
  EXPECT_GT(ups, 0);
  EXPECT_LT(ups, n);
}

TEST(Layout, SamplesAreUnbiasedAndIndependent) {
  // Each sample's value (2c - (K-1)) / (K-1) has mean u and variance (hi - u)(u - lo) <= Delta^2 / 4;
  // the two samples of a value are independent, so their covariance is zero. 4000 copies of 4
  // values at 2 bits; tolerances are 4.5 standard errors.
  const int copies = 4000;
  const std::vector<float> u = {-0.9f, -0.6f, 0.0f, 0.7f};
  std::vector<uint8_t> codes[2];
  quantize_double_sampled(u.data(), 1, 4, 2, copies, 7, 0, codes);
  for (int k = 0; k < 4; ++k) {
    double mean[2] = {0, 0}, cov = 0.0;
    for (int c = 0; c < copies; ++c) {
      const double v0 = (2.0 * codes[0][c * 4 + k] - 3) / 3, v1 = (2.0 * codes[1][c * 4 + k] - 3) / 3;
      mean[0] += v0;
      mean[1] += v1;
      cov += (v0 - u[k]) * (v1 - u[k]);
    }
    const double sd = (2.0 / 3) / 2 / std::sqrt(copies);  // Delta / 2 / sqrt(n)
    EXPECT_NEAR(mean[0] / copies, u[k], 4.5 * sd) << k;
    EXPECT_NEAR(mean[1] / copies, u[k], 4.5 * sd) << k;
    EXPECT_NEAR(cov / copies, 0.0, 4.5 * (2.0 / 3) * (2.0 / 3) / 4 / std::sqrt(copies)) << k;
  }
  // Power: the mean test rejects a quantizer biased by always rounding down (to the interval's lower
  // level), for every value not on a level.
  const zipml::kernel::Levels levels{nullptr, 4};
  for (int k = 0; k < 4; ++k) {
    const float lower = levels.at(zipml::kernel::locate(u[k], levels).index);
    EXPECT_GT(std::fabs(lower - u[k]), 4.5 * (2.0 / 3) / 2 / std::sqrt(copies)) << k;
  }
}

TEST(Layout, FixedPointLabels) {
  EXPECT_EQ(to_fixed(1.0), kOne);
  EXPECT_EQ(to_fixed(-0.5), -kOne / 2);
  EXPECT_EQ(to_fixed(1e9), INT32_MAX);
  EXPECT_EQ(to_fixed(-1e9), INT32_MIN);
  EXPECT_DOUBLE_EQ(from_fixed(to_fixed(0.25)), 0.25);
}

#ifdef ZIPML_FPGA_WITH_LINEAR
TEST(Layout, CodesEqualTheLinearSampleStore) {
  const int64_t rows = 31, cols = 19;
  const std::vector<float> u = uniform_matrix(rows, cols, 4);
  for (int bits : {1, 2, 4, 8}) {
    const auto store = zipml::linear::SampleStore::build(
        u.data(), rows, cols, zipml::linear::FeatureLevels::make_uniform(bits), 2, 3, false, 77, 1);
    std::vector<uint8_t> codes[2];
    quantize_double_sampled(u.data(), rows, cols, bits, 3, 77, 0, codes);
    for (int c = 0; c < 3; ++c)
      for (int s = 0; s < 2; ++s)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t k = 0; k < cols; ++k)
            ASSERT_EQ(codes[s][(c * rows + r) * cols + k], store.code(c, r, k, s)) << "bits " << bits;
    const auto naive_store = zipml::linear::SampleStore::build(
        u.data(), rows, cols, zipml::linear::FeatureLevels::make_uniform(bits), 1, 2, false, 77, 1);
    quantize_codes(u.data(), rows, cols, bits, 2, 77, 0, Sampling::Naive, codes);
    for (int c = 0; c < 2; ++c)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < cols; ++k) ASSERT_EQ(codes[0][(c * rows + r) * cols + k], naive_store.code(c, r, k, 0));
  }
}
#endif
