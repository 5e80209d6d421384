// The fixed-point SGD of the accelerator (its bit-exact reference) as an optimizer: it tracks the
// same SGD in double precision, and with double sampling it reaches the full-precision loss where
// reusing one sample (naive) stays biased (ZipML, arXiv 1611.05402, Sections 3 and 4).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "fpga/host/layout.h"

using namespace zipml::fpga;

namespace {

struct Problem {
  int64_t rows, cols;
  std::vector<float> x;
  std::vector<double> y;
};

Problem regression(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::normal_distribution<double> noise(0.0, 0.05);
  Problem p{rows, cols, std::vector<float>(static_cast<size_t>(rows * cols)), std::vector<double>(rows)};
  std::vector<double> w(cols);
  for (double& v : w) v = u(g) / std::sqrt(static_cast<double>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    double z = noise(g);
    for (int64_t k = 0; k < cols; ++k) z += (p.x[r * cols + k] = u(g)) * w[k];
    p.y[r] = z;
  }
  return p;
}

// Mean of (a.w + w0 - y)^2 / 2 on the full-precision data.
double loss(const Problem& p, const std::vector<int32_t>& model, int64_t epoch) {
  const int32_t* m = model.data() + epoch * (p.cols + 1);
  double sum = 0.0;
  for (int64_t r = 0; r < p.rows; ++r) {
    double z = from_fixed(m[p.cols]) - p.y[r];
    for (int64_t k = 0; k < p.cols; ++k) z += p.x[r * p.cols + k] * from_fixed(m[k]);
    sum += 0.5 * z * z;
  }
  return sum / static_cast<double>(p.rows);
}

TrainingData quantized(const Problem& p, int bits, int copies, uint64_t seed) {
  TrainingData d;
  d.bits = bits;
  d.rows = p.rows;
  d.cols = p.cols;
  d.copies = bits == kFloatBits ? 1 : copies;
  for (double y : p.y) d.labels.push_back(to_fixed(y));
  if (bits == kFloatBits)
    d.values = p.x;
  else
    quantize_double_sampled(p.x.data(), p.rows, p.cols, bits, copies, seed, 0, d.codes);
  return d;
}

SgdConfig config(const TrainingData& d, int epochs, int batch_log2, int step_shift) {
  SgdConfig c;
  c.rows = static_cast<uint32_t>(d.rows);
  c.cols = static_cast<uint32_t>(d.cols);
  c.copies = static_cast<uint32_t>(d.copies);
  c.epochs = static_cast<uint32_t>(epochs);
  c.batch_log2 = static_cast<uint32_t>(batch_log2);
  c.step_shift = static_cast<uint32_t>(step_shift);
  return c;
}

}  // namespace

TEST(Convergence, FixedPointTracksRealArithmetic) {
  // The same mini-batch SGD on the same decoded values t / D in double precision. Each update
  // rounds every weight down by less than 2^-23, so after T rows the difference stays within a
  // small multiple of T 2^-23 (the iteration is a contraction at this step).
  const Problem p = regression(300, 24, 1);
  for (int bits : {kFloatBits, 8, 2}) {
    const TrainingData d = quantized(p, bits, 2, 9);
    const SgdConfig c = config(d, 2, 2, 5);
    const std::vector<int32_t> fixed = reference_sgd(d, c);
    const double D = bits == kFloatBits ? 8388608.0 : (1 << bits) - 1;
    std::vector<double> x(p.cols, 0.0), snap;
    double x0 = 0.0;
    for (uint32_t e = 0; e < c.epochs; ++e)
      for (int64_t r0 = 0; r0 < p.rows; r0 += 4) {
        snap = x;
        const double snap0 = x0;
        for (int64_t r = r0; r < std::min(p.rows, r0 + 4); ++r) {
          double z = snap0 - from_fixed(d.labels[r]);
          for (int64_t k = 0; k < p.cols; ++k) z += snap[k] * d.term(e % d.copies, r, k, 0) / D;
          for (int64_t k = 0; k < p.cols; ++k) {
            const int sample = bits == kFloatBits ? 0 : 1;
            x[k] -= std::ldexp(z * d.term(e % d.copies, r, k, sample) / D, -5);
          }
          x0 -= std::ldexp(z, -5);
        }
      }
    const double tolerance = 8.0 * 2 * p.rows * std::ldexp(1.0, -23);
    for (int64_t k = 0; k < p.cols; ++k)
      EXPECT_NEAR(from_fixed(fixed[(c.epochs - 1) * (p.cols + 1) + k]), x[k], tolerance) << bits;
    EXPECT_NEAR(from_fixed(fixed.back()), x0, tolerance) << bits;
  }
}

TEST(Convergence, DoubleSamplingReachesTheFloatLossNaiveSamplingDoesNot) {
  // 2-bit data, 2000 x 16, fresh quantizations every epoch, 12 epochs at step 2^-9 on batches of 4.
  // Double sampling ends within a few percent of the float design's loss; reusing sample 0 in the
  // gradient (naive, Section 3) converges to the ridge-like biased optimum, well above it.
  const Problem p = regression(2000, 16, 3);
  const int epochs = 12;
  const double float_loss =
      loss(p, reference_sgd(quantized(p, kFloatBits, 1, 0), config(quantized(p, kFloatBits, 1, 0), epochs, 2, 9)),
           epochs - 1);
  TrainingData ds = quantized(p, 2, epochs, 5);
  const double double_loss = loss(p, reference_sgd(ds, config(ds, epochs, 2, 9)), epochs - 1);
  TrainingData naive = ds;
  naive.codes[1] = naive.codes[0];
  const double naive_loss = loss(p, reference_sgd(naive, config(naive, epochs, 2, 9)), epochs - 1);
  // Naive sampling's fixed point solves (A'A + sum_k D_k) w = A'b: at 2 bits the value variance
  // (about 0.08 on average here against E a^2 = 1/3) shrinks the weights by about a fifth, an excess
  // loss of about 2e-3; double sampling's excess is SGD noise, an order of magnitude smaller.
  EXPECT_LT(double_loss, float_loss * 1.10) << "float " << float_loss << " naive " << naive_loss;
  EXPECT_GT(naive_loss - float_loss, 1e-3) << "float " << float_loss << " double " << double_loss;
  EXPECT_GT(naive_loss - float_loss, 10 * (double_loss - float_loss))
      << "float " << float_loss << " double " << double_loss;
}
