// The arithmetic primitives of fpga/hls/format.h and hls_compat.h against plain definitions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "fpga/hls/format.h"

using namespace zipml::fpga;

namespace {

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

}  // namespace

TEST(Format, FloatToFixedRoundsToNearestTiesAway) {
  std::mt19937 g(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<int> e(-40, 0);
  for (int i = 0; i < 200000; ++i) {
    const float f = i % 2 ? u(g) : std::ldexp(u(g), e(g));  // also tiny values, where rounding matters
    ASSERT_EQ(float_to_fixed(bits_of(f)), std::lround(static_cast<double>(f) * 8388608.0)) << f;
  }
  for (float f : {0.0f, -0.0f, 1.0f, -1.0f, 0x1p-24f, -0x1p-24f, 0x1.8p-24f, 0x1p-25f, 0x3p-25f, 0x1p-126f, 0x1p-149f,
                  255.5f, -255.5f})
    EXPECT_EQ(float_to_fixed(bits_of(f)), std::lround(static_cast<double>(f) * 8388608.0)) << f;
  EXPECT_EQ(float_to_fixed(bits_of(300.0f)), INT32_MAX);
  EXPECT_EQ(float_to_fixed(bits_of(-300.0f)), -INT32_MAX);
  EXPECT_EQ(float_to_fixed(bits_of(std::numeric_limits<float>::infinity())), INT32_MAX);
}

TEST(Format, FloorDivisionAndShiftRoundDown) {
  std::mt19937_64 g(5);
  for (int i = 0; i < 100000; ++i) {
    const int64_t a = static_cast<int64_t>(g() >> 8) - (int64_t{1} << 55);
    for (int64_t d : {1, 3, 15, 255, 8388608}) {
      ASSERT_EQ(floor_div(a, d), static_cast<int64_t>(std::floor(static_cast<long double>(a) / d)));
    }
    ASSERT_EQ(asr(a, 23), floor_div(a, 8388608));
  }
  for (int64_t x = -70; x <= 70; ++x)
    for (int s = 0; s < 5; ++s)
      ASSERT_EQ(rshift_round(x, s), static_cast<int64_t>(std::floor(x / std::ldexp(1.0, s) + 0.5)));
  EXPECT_EQ(sat32(int64_t{1} << 40), INT32_MAX);
  EXPECT_EQ(sat32(-(int64_t{1} << 40)), INT32_MIN);
}

TEST(Format, CodesStandForTheCoresUniformGrid) {
  // code c of b bits: the level (2c - (2^b - 1)) / (2^b - 1) of kernels/common/quantize.h
  for (int c = 0; c < 2; ++c) EXPECT_EQ(Format<1>::term_of_code(c), 2 * c - 1);
  for (int c = 0; c < 4; ++c) EXPECT_EQ(Format<2>::term_of_code(c), 2 * c - 3);
  for (int c = 0; c < 256; ++c) EXPECT_EQ(Format<8>::term_of_code(c), 2 * c - 255);
  EXPECT_EQ(Format<8>::kDenominator, 255);
  EXPECT_EQ(Format<kFloatBits>::kDenominator, 1 << 23);
}

TEST(Format, SigmoidTableIsTheGeneratorsAndCloseToTheLogistic) {
  for (int i = 0; i < kSigmoidEntries; ++i) {
    const double mid = (i - kSigmoidEntries / 2 + 0.5) / (1 << kSigmoidStepBits);
    ASSERT_EQ(kSigmoidTable[i], static_cast<int32_t>(std::floor(1.0 / (1.0 + std::exp(-mid)) * kOne + 0.5))) << i;
    if (i > 0) {
      ASSERT_GE(kSigmoidTable[i], kSigmoidTable[i - 1]);
    }
  }
  for (double z = -20.0; z <= 20.0; z += 1.0 / 1024) {
    const double got = static_cast<double>(sigmoid_fixed(static_cast<int64_t>(std::llround(z * kOne)))) / kOne;
    ASSERT_NEAR(got, 1.0 / (1.0 + std::exp(-z)), 1e-3) << z;
  }
}

TEST(Format, RowScalarPerLoss) {
  using F = Format<8>;  // D = 255
  const int32_t one = kOne;
  // least squares: e = floor(sum / D) + x0 - b, h = floor(e 2^23 / D)
  RowScalar s = row_scalar<F>(255 * 3 * int64_t{one}, one / 2, one, Loss::LeastSquares);
  EXPECT_EQ(s.e, 3 * one + one / 2 - one);
  EXPECT_EQ(s.h, floor_div(static_cast<int64_t>(s.e) << 23, 255));
  EXPECT_EQ(row_scalar<F>(-1, 0, 0, Loss::LeastSquares).e, -1);  // floor, not truncation
  // L2-SVM: slope 2 (z - b) inside the margin (b z < 1), zero outside
  EXPECT_EQ(row_scalar<F>(255 * int64_t{one - 1}, 0, one, Loss::L2SVM).e, 2 * (-1));
  EXPECT_EQ(row_scalar<F>(255 * int64_t{one}, 0, one, Loss::L2SVM).e, 0);
  EXPECT_EQ(row_scalar<F>(-255 * int64_t{one}, 0, -one, Loss::L2SVM).e, 0);
  EXPECT_EQ(row_scalar<F>(0, 0, -one, Loss::L2SVM).e, 2 * one);
  // logistic: sigmoid(z) - [b > 0]
  EXPECT_EQ(row_scalar<F>(0, 0, one, Loss::Logistic).e, sigmoid_fixed(0) - one);
  EXPECT_EQ(row_scalar<F>(0, 0, -one, Loss::Logistic).e, sigmoid_fixed(0));
  // the residual saturates to int32
  EXPECT_EQ(row_scalar<F>(INT64_C(1) << 60, 0, 0, Loss::LeastSquares).e, INT32_MAX);
}

TEST(Format, LaneUpdateIsTheScaledGradientStep) {
  std::mt19937 g(11);
  std::uniform_int_distribution<int32_t> x(-(1 << 26), 1 << 26), e(-(1 << 24), 1 << 24), code(0, 15);
  for (int i = 0; i < 100000; ++i) {
    const int32_t xi = x(g), ei = e(g), t = Format<4>::term_of_code(code(g));
    const int shift = i % 13;
    const int64_t h = floor_div(static_cast<int64_t>(ei) << kGuard, 15);
    const double want = xi - std::ldexp(static_cast<double>(ei) * t / 15.0, -shift);
    // h rounds down by < 1 unit of 2^-23 of the scalar; the product rounds by <= 1/2 unit of the model
    ASSERT_NEAR(lane_update(xi, h, t, shift, 0), want, 0.5 + 15.0 * std::ldexp(1.0, -shift - kGuard) + 1e-9);
  }
  EXPECT_EQ(lane_update(1000, 0, 0, 0, 3), 1000 - 125);  // ridge: x -= asr(x, ridge shift)
  SgdConfig c;
  c.step_shift = 5;
  c.decay_every = 3;
  c.l2_shift = 9;
  EXPECT_EQ(epoch_shift(c, 7), 7);
  EXPECT_EQ(epoch_ridge_shift(c, 7), 11);  // the ridge halves with the step
  c.l2_shift = 0;
  EXPECT_EQ(epoch_ridge_shift(c, 7), 0);
  EXPECT_EQ(intercept_update(0, -8, 2), 2);
}

TEST(Compat, LineFieldsRoundTrip) {
  Line line{};
  std::mt19937 g(1);
  for (int width : {1, 2, 4, 8, 16, 32})
    for (int lo = 0; lo < 512; lo += width) {
      const uint32_t v = static_cast<uint32_t>(g()) & (width == 32 ? 0xFFFFFFFFu : (1u << width) - 1);
      line.set(lo, width, v);
      ASSERT_EQ(line.get(lo, width), v);
    }
  Line z{};
  z.set(7, 1, 1);
  EXPECT_EQ(z.word[0], 128u);
  z.set_slot32(15, 0xDEADBEEFu);
  EXPECT_EQ(z.word[7] >> 32, 0xDEADBEEFu);
}

TEST(Compat, FifoFailsLoudlyAndRecordsItsPeak) {
  Fifo<int, 3> f;
  EXPECT_THROW(f.read(), SimulationError);
  f.write(1);
  f.write(2);
  f.write(3);
  EXPECT_TRUE(f.full());
  EXPECT_THROW(f.write(4), SimulationError);
  EXPECT_EQ(f.read(), 1);
  f.write(4);
  EXPECT_EQ(f.read(), 2);
  EXPECT_EQ(f.read(), 3);
  EXPECT_EQ(f.read(), 4);
  EXPECT_EQ(f.peak(), 3);
}
