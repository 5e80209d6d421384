// The C++ API of <zipml/zipml.h>, as a LibTorch program sees it: every result against the
// per-element definition of kernels/common/quantize.h or a slow reference, backward through the
// autograd registered in C++, and the errors users get.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <zipml/zipml.h>

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/pack.h"
#include "kernels/common/quantize.h"
#include "reference.h"
#include "tensor_assertions.h"

namespace {

using zipml::Granularity;
using zipml::Levels;
using zipml::QuantizeOptions;
using zipml::Rounding;

using zipml::testing::bitwise_equal;

// A sorted codebook of 2^bits - 1 uneven levels (one fewer than the bits allow) from -reach to
// reach: values beyond the reach clip.
at::Tensor uneven_codebook(int64_t bits, double reach) {
  const int64_t count = std::max<int64_t>(2, (int64_t{1} << bits) - 1);
  return (at::linspace(-1.0, 1.0, count, at::kFloat).pow(3) * reach).contiguous();
}

QuantizeOptions options_for(int64_t bits, Rounding rounding, Levels levels, Granularity granularity) {
  QuantizeOptions o(bits);
  o.rounding(rounding).levels(levels).granularity(granularity).seed(20170611).offset(3);
  if (levels == Levels::Codebook) o.codebook(uneven_codebook(bits, 0.9));
  return o;
}

const char* label(Levels l) { return l == Levels::Uniform ? "uniform" : l == Levels::Optimal ? "optimal" : "codebook"; }

// --- fake_quantize == quantize + dequantize == the per-element definition ------------------------

TEST(Api, FakeQuantizeEqualsQuantizeThenDequantize) {
  at::manual_seed(1);
  const at::Tensor base = at::randn({6, 5, 7}, at::kDouble);
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16})
    for (bool contiguous : {true, false})
      for (int64_t bits : {1, 3, 8})
        for (Rounding rounding : {Rounding::Stochastic, Rounding::Nearest})
          for (Levels levels : {Levels::Uniform, Levels::Optimal, Levels::Codebook})
            for (Granularity g : {Granularity::Tensor, Granularity::Channel, Granularity::Row}) {
              const at::Tensor x = contiguous ? base.to(dtype) : base.to(dtype).transpose(0, 2);
              const QuantizeOptions o = options_for(bits, rounding, levels, g);
              const zipml::QuantizedTensor q = zipml::quantize(x, o);
              ASSERT_EQ(q.codes.scalar_type(), at::kByte);
              ASSERT_EQ(q.codes.sizes(), x.sizes());
              ASSERT_TRUE(bitwise_equal(zipml::fake_quantize(x, o), q.dequantize(dtype)))
                  << dtype << (contiguous ? "" : " transposed") << " bits " << bits << " " << label(levels)
                  << (rounding == Rounding::Nearest ? " nearest" : " stochastic") << " granularity " << int(g);
            }
}

// out[i] = fake_quantize_value(x[i], s, L, rounding, draw of element i of stream (seed, offset)), i the
// element's row-major position, whatever the thread count, the chunking or the CPU instruction set.
zipml::kernel::ElementDraw element_draw(uint64_t seed, uint64_t offset, uint64_t i) {
  return zipml::kernel::ElementDraw{zipml::kernel::philox_draw(seed, offset, i), seed, offset, i};
}

at::Tensor per_element_reference(const at::Tensor& x, const zipml::QuantizedTensor& q, Rounding rounding,
                                 uint64_t seed, uint64_t offset) {
  const at::Tensor xs = x.to(at::kFloat).contiguous();
  const at::Tensor scale = q.scale.expand(x.sizes()).contiguous();
  const at::Tensor table = q.levels.contiguous();
  const zipml::kernel::Levels levels{q.uniform ? nullptr : table.data_ptr<float>(), int(table.numel())};
  const int mode = rounding == Rounding::Nearest ? zipml::kernel::kNearest : zipml::kernel::kStochastic;
  at::Tensor out = at::empty_like(xs);
  const float* xp = xs.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t i = 0; i < xs.numel(); ++i)
    op[i] = zipml::kernel::fake_quantize_value(xp[i], sp[i], zipml::kernel::inverse_scale(sp[i]), levels, mode,
                                               element_draw(seed, offset, uint64_t(i)));
  return out;
}

// The CPU instruction-set variants this build and processor have (the span kernels, kernels/cpu).
std::vector<std::string> available_isas() {
  static const auto isa = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("zipml::_cpu_isa", "")
                              .typed<std::string(c10::string_view)>();
  std::vector<std::string> names;
  for (const char* name : {"scalar", "avx2", "avx512"}) {
    try {
      isa.call(name);
      names.push_back(name);
    } catch (const c10::Error&) {
    }
  }
  isa.call("auto");
  return names;
}

void set_isa(const std::string& name) {
  static const auto isa = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("zipml::_cpu_isa", "")
                              .typed<std::string(c10::string_view)>();
  isa.call(name);
}

TEST(Api, FakeQuantizeMatchesPerElementDefinition) {
  at::manual_seed(2);
  // Enough elements for several scheduling blocks per channel; an odd row length for the tails.
  const at::Tensor x = at::randn({3, 50001}) * at::tensor({1.0f, 1e-3f, 1e3f}).reshape({3, 1});
  const int threads = at::get_num_threads();
  for (const std::string& isa : available_isas()) {
    set_isa(isa);
    for (int n : {1, 2}) {
      at::set_num_threads(n);
      for (Rounding rounding : {Rounding::Stochastic, Rounding::Nearest})
        for (Levels levels : {Levels::Uniform, Levels::Codebook}) {
          const QuantizeOptions o = options_for(4, rounding, levels, Granularity::Channel);
          const zipml::QuantizedTensor q = zipml::quantize(x, o);
          EXPECT_TRUE(bitwise_equal(zipml::fake_quantize(x, o), per_element_reference(x, q, rounding, 20170611, 3)))
              << isa << ", " << n << " threads, " << label(levels);
        }
    }
  }
  set_isa("auto");
  at::set_num_threads(threads);
}

TEST(Api, FakeQuantizeOutWritesIntoTheGivenTensor) {
  const at::Tensor x = at::randn({4, 9});
  at::Tensor out = at::empty_like(x);
  const QuantizeOptions o = QuantizeOptions(2).seed(5);
  at::Tensor& r = zipml::fake_quantize_out(out, x, o);
  EXPECT_TRUE(r.is_same(out));
  EXPECT_TRUE(bitwise_equal(out, zipml::fake_quantize(x, o)));
}

TEST(Api, SeedsAndOffsetsSelectIndependentStreams) {
  const at::Tensor x = at::rand({4096}) * 2 - 1;
  const at::Tensor a = zipml::fake_quantize(x, QuantizeOptions(2).seed(1));
  EXPECT_TRUE(bitwise_equal(a, zipml::fake_quantize(x, QuantizeOptions(2).seed(1))));
  EXPECT_FALSE(at::equal(a, zipml::fake_quantize(x, QuantizeOptions(2).seed(2))));
  EXPECT_FALSE(at::equal(a, zipml::fake_quantize(x, QuantizeOptions(2).seed(1).offset(1))));
  // Without a seed, one is drawn from torch's default generator.
  at::manual_seed(7);
  const at::Tensor b = zipml::fake_quantize(x, QuantizeOptions(2));
  at::manual_seed(7);
  EXPECT_TRUE(bitwise_equal(b, zipml::fake_quantize(x, QuantizeOptions(2))));
}

TEST(Api, EmptyTensorsAndNonFiniteValues) {
  EXPECT_EQ(zipml::fake_quantize(at::empty({0, 3}), QuantizeOptions(4).seed(0)).sizes(), at::IntArrayRef({0, 3}));
  EXPECT_EQ(zipml::quantize(at::empty({0}), QuantizeOptions(4).seed(0)).codes.numel(), 0);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  // With a given scale, only the non-finite elements become NaN.
  const at::Tensor x = at::tensor({0.5f, nan, -0.25f, inf});
  const at::Tensor y = zipml::fake_quantize(x, QuantizeOptions(2).rounding(Rounding::Nearest).scale(at::ones({1})));
  EXPECT_EQ(y[0].item<float>(), 1.0f / 3.0f);
  EXPECT_TRUE(std::isnan(y[1].item<float>()));
  EXPECT_EQ(y[2].item<float>(), -1.0f / 3.0f);
  EXPECT_TRUE(std::isnan(y[3].item<float>()));
  // The max-abs scale of a group holding NaN is NaN: the whole group is NaN.
  EXPECT_TRUE(zipml::fake_quantize(x, QuantizeOptions(2).seed(0)).isnan().all().item<bool>());
  // Codes cannot represent NaN: quantize refuses.
  EXPECT_THROW(zipml::quantize(x, QuantizeOptions(2).seed(0)), c10::ValueError);
}

// --- double sampling (Section 4) -----------------------------------------------------------------

TEST(Api, DoubleSampleDecodesToTheTwoSamples) {
  at::manual_seed(3);
  const at::Tensor x = at::randn({5, 301});
  for (Levels levels : {Levels::Uniform, Levels::Optimal, Levels::Codebook})
    for (int64_t bits : {1, 2, 4}) {
      const QuantizeOptions o = options_for(bits, Rounding::Stochastic, levels, Granularity::Row);
      const zipml::DoubleSampled ds = zipml::double_sample(x, o);
      // Sample 1 is stochastic rounding with stream `offset`, sample 2 with stream `offset + 1`.
      QuantizeOptions second = o;
      second.offset(o.offset() + 1);
      const at::Tensor first = ds.first();
      EXPECT_TRUE(bitwise_equal(first, zipml::fake_quantize(x, o))) << label(levels) << " " << bits;
      EXPECT_TRUE(bitwise_equal(ds.second(), zipml::fake_quantize(x, second))) << label(levels) << " " << bits;
      EXPECT_FALSE(at::equal(first, ds.second()));
      // The compact store: both samples in interval `index`, rounded up by bit 0 / bit 1 of `up`.
      const int64_t k = ds.levels.numel();
      EXPECT_LE(ds.index.max().item<int64_t>(), k - 2);
      EXPECT_LE(ds.up.max().item<int64_t>(), 3);
      const at::Tensor up1 = ds.up.bitwise_and(1).to(at::kLong), up2 = ds.up.bitwise_right_shift(1).to(at::kLong);
      const at::Tensor idx = ds.index.to(at::kLong);
      EXPECT_TRUE(bitwise_equal(first, ds.levels.index_select(0, (idx + up1).reshape(-1)).reshape(x.sizes()) * ds.scale));
      EXPECT_TRUE(bitwise_equal(ds.second(), ds.levels.index_select(0, (idx + up2).reshape(-1)).reshape(x.sizes()) * ds.scale));
      const int64_t index_bits = zipml::kernel::interval_bits(int(k));
      EXPECT_EQ(ds.nbytes(), zipml::kernel::packed_bytes(x.numel(), int(index_bits)) +
                                 zipml::kernel::packed_bytes(x.numel(), 2) + 4 * ds.scale.numel() +
                                 (levels == Levels::Uniform ? 0 : 4 * k));
    }
}

// --- unbiasedness of stochastic rounding (Section 2) ---------------------------------------------

// Tests of R samples Q_r(x) of each element against the theory of stochastic rounding: element i
// rounds up with probability p_i = (v - l) / (u - l), so E[Q(x_i)] = x_i and
// Var[Q(x_i)] = s^2 (u - v)(v - l) = d_i^2 p_i q_i (d_i = (u - l) s). Each statistic is a z-score,
// about N(0, 1) under the theory:
//   bias:      sum_i (mean_i - x_i) / sqrt(sum_i Var_i / R)              (a common bias)
//   chi2:      sum_i z_i^2 - n, z_i = (mean_i - x_i) / sqrt(Var_i / R),  (per-element biases of
//              over its standard deviation sqrt(sum_i 2 - 6/R + 1/(R p_i q_i))   either sign)
//   variance:  sum_i (S_i^2 - Var_i) over its standard deviation, S_i^2 the sample variance
//              (Var[S^2] = (mu4 - Var^2 (R-3)/(R-1)) / R, mu4 = d^4 pq (1 - 3pq)).
// Elements with R p q < 1 (rounding almost never or almost always up) are left out of chi2, where
// R samples cannot resolve them.
struct RoundingStats {
  double bias, chi2, variance;
};

struct Subject {
  at::Tensor x;                // float32
  at::Tensor scale;            // per element, float32
  std::vector<double> levels;  // in units of the scale
};

RoundingStats rounding_stats(const Subject& s, int64_t samples, const std::function<at::Tensor(int64_t)>& sample) {
  const int64_t n = s.x.numel();
  std::vector<double> sum(n, 0.0), sum_sq(n, 0.0);
  for (int64_t r = 0; r < samples; ++r) {
    const at::Tensor q = sample(r).to(at::kDouble).contiguous();
    const double* qp = q.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) {
      sum[i] += qp[i];
      sum_sq[i] += qp[i] * qp[i];
    }
  }
  const double R = double(samples);
  const float* xp = s.x.data_ptr<float>();
  const float* sp = s.scale.data_ptr<float>();
  double bias = 0, bias_var = 0, chi2 = 0, chi2_var = 0, var_dev = 0, var_var = 0;
  int64_t chi2_n = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float raw = xp[i] * zipml::kernel::inverse_scale(sp[i]);  // the kernel's normalisation
    if (raw < s.levels.front() - 1e-6 || raw > s.levels.back() + 1e-6) {
      ADD_FAILURE() << "element " << i << " clips: the theory holds within the levels' range";
      return {};
    }
    const double v = std::clamp<double>(raw, s.levels.front(), s.levels.back());
    const int j = zipml::reference::interval_of(v, s.levels);
    const double d = (s.levels[j + 1] - s.levels[j]) * sp[i];
    const double p = (v - s.levels[j]) / (s.levels[j + 1] - s.levels[j]), pq = p * (1 - p);
    const double var = d * d * pq;
    const double mean = sum[i] / R;
    bias += mean - xp[i];
    bias_var += var / R;
    if (R * pq >= 1) {
      chi2 += (mean - xp[i]) * (mean - xp[i]) / (var / R) - 1;
      chi2_var += 2 - 6 / R + 1 / (R * pq);
      ++chi2_n;
    }
    const double sample_var = (sum_sq[i] - R * mean * mean) / (R - 1);
    const double mu4 = d * d * d * d * pq * (1 - 3 * pq);
    var_dev += sample_var - var;
    var_var += (mu4 - var * var * (R - 3) / (R - 1)) / R;
  }
  EXPECT_GT(chi2_n, n / 2) << "too few elements resolvable by " << samples << " samples";
  return {bias / std::sqrt(bias_var), chi2 / std::sqrt(chi2_var), var_dev / std::sqrt(var_var)};
}

// Values spread over the whole range, four channels of very different scales.
Subject make_subject(int64_t bits, const std::optional<at::Tensor>& codebook) {
  at::manual_seed(4);
  const at::Tensor x = (at::rand({4, 1024}) * 2 - 1) * at::tensor({1.0f, 0.01f, 3.0f, 250.0f}).reshape({4, 1});
  QuantizeOptions o(bits);
  o.granularity(Granularity::Channel).seed(0);
  if (codebook) o.levels(Levels::Codebook).codebook(*codebook);
  const zipml::QuantizedTensor q = zipml::quantize(x, o);
  const at::Tensor l = q.levels.to(at::kDouble).contiguous();
  return {x, q.scale.expand(x.sizes()).contiguous(),
          std::vector<double>(l.data_ptr<double>(), l.data_ptr<double>() + l.numel())};
}

// Stochastic rounding that rounds up with probability frac + delta: biased by delta * (u - l) * s.
at::Tensor biased_rounding(const Subject& s, double delta, uint64_t seed, uint64_t offset) {
  const std::vector<float> table(s.levels.begin(), s.levels.end());
  const zipml::kernel::Levels levels{table.data(), int(table.size())};
  at::Tensor out = at::empty_like(s.x);
  const float* xp = s.x.data_ptr<float>();
  const float* sp = s.scale.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t i = 0; i < s.x.numel(); ++i) {
    const zipml::kernel::Interval at =
        zipml::kernel::locate(zipml::kernel::normalize(xp[i], zipml::kernel::inverse_scale(sp[i]), levels), levels);
    const float p = std::min(1.0f, at.frac + float(delta));
    const int up = zipml::kernel::round_up(p, zipml::kernel::kStochastic, element_draw(seed, offset, uint64_t(i)));
    op[i] = table[at.index + up] * sp[i];
  }
  return out;
}

constexpr int64_t kSamples = 256;
constexpr double kZ = 5.0;  // |z| beyond 5: under the theory, probability below 1e-6

class Unbiasedness : public ::testing::TestWithParam<int> {
 protected:
  // Parameter: bits of the uniform grid, or 0 for a 3-bit uneven codebook.
  int64_t bits() const { return GetParam() ? GetParam() : 3; }
  std::optional<at::Tensor> codebook() const {
    return GetParam() ? std::nullopt : std::optional<at::Tensor>(uneven_codebook(3, 1.0));
  }
  QuantizeOptions options(int64_t offset) const {
    QuantizeOptions o(bits());
    o.granularity(Granularity::Channel).seed(99).offset(uint64_t(offset));
    if (codebook()) o.levels(Levels::Codebook).codebook(*codebook());
    return o;
  }
};

TEST_P(Unbiasedness, FakeQuantizeMeanAndVarianceMatchTheory) {
  const Subject s = make_subject(bits(), codebook());
  const RoundingStats st = rounding_stats(s, kSamples, [&](int64_t r) { return zipml::fake_quantize(s.x, options(r)); });
  EXPECT_LT(std::abs(st.bias), kZ);
  EXPECT_LT(std::abs(st.chi2), kZ);
  EXPECT_LT(std::abs(st.variance), kZ);
}

// The gradient quantized in backward by quantize_grad is unbiased too (it uses the uniform grid).
class GradientUnbiasedness : public Unbiasedness {};

TEST_P(GradientUnbiasedness, QuantizeGradBackwardIsUnbiased) {
  const Subject s = make_subject(bits(), std::nullopt);
  const at::Tensor x = at::zeros_like(s.x).requires_grad_();
  const RoundingStats st = rounding_stats(s, kSamples, [&](int64_t r) {
    x.mutable_grad() = at::Tensor();
    zipml::quantize_grad(x, bits(), Granularity::Channel, 99, uint64_t(r)).backward(s.x);
    return x.grad();
  });
  EXPECT_LT(std::abs(st.bias), kZ);
  EXPECT_LT(std::abs(st.chi2), kZ);
  EXPECT_LT(std::abs(st.variance), kZ);
}

// The same statistics have power: a round-up probability off by 0.02 fails the bias test, and
// nearest rounding (deterministic, biased towards the nearest level) fails chi2 and variance.
TEST_P(Unbiasedness, BiasedRoundingFailsTheTest) {
  const Subject s = make_subject(bits(), codebook());
  const RoundingStats reference_like =
      rounding_stats(s, kSamples, [&](int64_t r) { return biased_rounding(s, 0.0, 99, uint64_t(r)); });
  EXPECT_LT(std::abs(reference_like.bias), kZ) << "the biased sampler with delta = 0 is the real one";
  EXPECT_LT(std::abs(reference_like.chi2), kZ);
  const RoundingStats biased =
      rounding_stats(s, kSamples, [&](int64_t r) { return biased_rounding(s, 0.02, 99, uint64_t(r)); });
  EXPECT_GT(biased.bias, kZ);
  EXPECT_GT(biased.chi2, kZ);
  const RoundingStats nearest = rounding_stats(s, kSamples, [&](int64_t r) {
    return zipml::fake_quantize(s.x, options(r).rounding(Rounding::Nearest));
  });
  EXPECT_GT(nearest.chi2, kZ);
  EXPECT_LT(nearest.variance, -kZ);
}

std::string levels_label(const ::testing::TestParamInfo<int>& info) {
  return info.param ? std::to_string(info.param) + "bit_uniform" : std::string("3bit_codebook");
}
INSTANTIATE_TEST_SUITE_P(Levels, Unbiasedness, ::testing::Values(1, 2, 4, 0), levels_label);
INSTANTIATE_TEST_SUITE_P(Levels, GradientUnbiasedness, ::testing::Values(1, 2, 4), levels_label);

// --- autograd registered in C++ ------------------------------------------------------------------

// Straight-through estimator: d fake_quantize / dx = 1 where v = x / s lies within the levels'
// range [L_0, L_K-1], else 0 (the quantizer clipped x).
at::Tensor ste_reference(const at::Tensor& x, const at::Tensor& scale, float lo, float hi, const at::Tensor& grad) {
  const at::Tensor xs = x.detach().contiguous(), s = scale.expand(x.sizes()).contiguous(), g = grad.contiguous();
  at::Tensor out = at::empty_like(g);
  for (int64_t i = 0; i < xs.numel(); ++i) {
    const float v = xs.data_ptr<float>()[i] * zipml::kernel::inverse_scale(s.data_ptr<float>()[i]);
    out.data_ptr<float>()[i] = g.data_ptr<float>()[i] * ((v >= lo && v <= hi) ? 1.0f : 0.0f);
  }
  return out;
}

TEST(Autograd, FakeQuantizeBackwardIsStraightThrough) {
  at::manual_seed(5);
  const at::Tensor x = at::randn({6, 40}).requires_grad_();
  const at::Tensor g = at::randn({6, 40});
  // Max-abs scale: nothing clips, the gradient passes unchanged.
  zipml::fake_quantize(x, QuantizeOptions(4).seed(1)).backward(g);
  EXPECT_TRUE(bitwise_equal(x.grad(), g));

  // A given per-tensor scale of half the max: the outer values clip.
  const at::Tensor half = (x.detach().abs().max() * 0.5).reshape({1});
  x.mutable_grad() = at::Tensor();
  zipml::fake_quantize(x, QuantizeOptions(4).seed(1).scale(half)).backward(g);
  const at::Tensor want = ste_reference(x, half, -1.0f, 1.0f, g);
  EXPECT_TRUE(bitwise_equal(x.grad(), want));
  EXPECT_GT((want == 0).sum().item<int64_t>(), 0) << "some values must clip";
  EXPECT_GT((want != 0).sum().item<int64_t>(), 0);

  // A per-channel scale, and a codebook narrower than [-1, 1] under the max-abs scale.
  const at::Tensor per_channel = x.detach().abs().amax(1, true) * 0.7;
  x.mutable_grad() = at::Tensor();
  zipml::fake_quantize(x, QuantizeOptions(3).seed(1).scale(per_channel)).backward(g);
  EXPECT_TRUE(bitwise_equal(x.grad(), ste_reference(x, per_channel, -1.0f, 1.0f, g)));

  const at::Tensor narrow = at::tensor({-0.5f, 0.0f, 0.5f});
  x.mutable_grad() = at::Tensor();
  zipml::fake_quantize(x, QuantizeOptions(2).seed(1).levels(Levels::Codebook).codebook(narrow)).backward(g);
  const at::Tensor absmax = x.detach().abs().max().reshape({1});
  EXPECT_TRUE(bitwise_equal(x.grad(), ste_reference(x, absmax, -0.5f, 0.5f, g)));
}

TEST(Autograd, QuantizeGradIsIdentityForwardAndQuantizesTheGradient) {
  at::manual_seed(6);
  const at::Tensor x = at::randn({8, 33}).requires_grad_();
  const at::Tensor g = at::randn({8, 33});
  for (Granularity gr : {Granularity::Tensor, Granularity::Channel, Granularity::Row}) {
    x.mutable_grad() = at::Tensor();
    const at::Tensor y = zipml::quantize_grad(x, 3, gr, 42, 7);
    EXPECT_TRUE(bitwise_equal(y, x.detach()));
    y.backward(g);
    EXPECT_TRUE(bitwise_equal(x.grad(), zipml::fake_quantize(g, QuantizeOptions(3).granularity(gr).seed(42).offset(7))));
  }
}

// --- pack / unpack -------------------------------------------------------------------------------

TEST(Api, PackUnpackMatchBitByBitReference) {
  std::mt19937 gen(8);
  for (int bits = 1; bits <= 8; ++bits)
    for (int64_t n : {0, 1, 7, 13, 4097}) {
      std::vector<uint8_t> codes(n);
      for (auto& c : codes) c = uint8_t(gen() & ((1u << bits) - 1u));
      const at::Tensor t = at::from_blob(codes.data(), {n}, at::kByte).clone();
      const at::Tensor packed = zipml::pack(t, bits);
      const std::vector<uint8_t> want = zipml::reference::pack_bits(codes, bits);
      ASSERT_EQ(packed.numel(), int64_t(want.size()));
      ASSERT_TRUE(std::equal(want.begin(), want.end(), packed.data_ptr<uint8_t>())) << bits << " bits, n=" << n;
      ASSERT_TRUE(bitwise_equal(zipml::unpack(packed, bits, n), t)) << bits << " bits, n=" << n;
    }
}

TEST(Api, QuantizedTensorPacksItsCodes) {
  const at::Tensor x = at::randn({3, 11});
  for (int64_t bits : {1, 2, 4, 5, 8}) {
    const zipml::QuantizedTensor q = zipml::quantize(x, QuantizeOptions(bits).seed(1));
    const at::Tensor packed = q.pack();
    EXPECT_EQ(packed.numel(), zipml::kernel::packed_bytes(x.numel(), int(bits)));
    EXPECT_TRUE(bitwise_equal(zipml::unpack(packed, bits, x.numel()).reshape(x.sizes()), q.codes));
    EXPECT_EQ(q.nbytes(), packed.numel() + 4);  // one float32 scale, the uniform grid implied
  }
}

// --- errors name the argument and the accepted values --------------------------------------------

template <class Error, class F>
void expect_error(F&& f, const std::string& message) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one saying: " << message;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << "message was: " << e.what();
  }
}

TEST(Errors, BadArgumentsGiveClearMessages) {
  const at::Tensor x = at::randn({4, 4});
  for (int64_t bits : {0, 9, -1})
    expect_error<c10::ValueError>([&] { zipml::fake_quantize(x, QuantizeOptions(bits).seed(0)); },
                                  "bits must be an integer from 1 to 8, got " + std::to_string(bits));
  expect_error<c10::ValueError>([&] { zipml::quantize_grad(x, 12); }, "bits must be an integer from 1 to 8, got 12");
  expect_error<c10::ValueError>([&] { zipml::pack(at::zeros({4}, at::kByte), 0); }, "bits must be an integer from 1 to 8");

  const auto with_codebook = [&](at::Tensor codebook, int64_t bits = 2) {
    return [=] { zipml::fake_quantize(x, QuantizeOptions(bits).seed(0).levels(Levels::Codebook).codebook(codebook)); };
  };
  expect_error<c10::ValueError>(with_codebook(at::tensor({0.5f, -0.5f})), "strictly increasing");
  expect_error<c10::ValueError>(with_codebook(at::tensor({-0.5f, -0.5f, 1.0f})), "strictly increasing");
  expect_error<c10::ValueError>(with_codebook(at::tensor({-1.5f, 0.0f})), "must lie in [-1, 1]");
  expect_error<c10::ValueError>(with_codebook(at::linspace(-1, 1, 5)), "1 to 2^bits = 4 levels");

  expect_error<c10::TypeError>([&] { zipml::fake_quantize(at::arange(10), QuantizeOptions(4).seed(0)); },
                               "x must be float32, float64, float16 or bfloat16, got Long");
  expect_error<c10::TypeError>([&] { zipml::quantize(at::ones({3}, at::kInt), QuantizeOptions(4).seed(0)); },
                               "x must be float32, float64, float16 or bfloat16, got Int");
  expect_error<c10::ValueError>(
      [&] { zipml::double_sample(x, QuantizeOptions(2).rounding(Rounding::Nearest).seed(0)); },
      "rounding must be Rounding::Stochastic");
  expect_error<c10::ValueError>([&] { zipml::unpack(at::zeros({1}, at::kByte), 3, 5); }, "need 2 bytes");
  expect_error<c10::ValueError>([&] { zipml::fake_quantize(x, QuantizeOptions(2).seed(0).scale(at::ones({3}))); },
                                "fits neither a per-tensor scale");
}

// --- CUDA == CPU ---------------------------------------------------------------------------------

TEST(Cuda, MatchesCpuBitForBit) {
#ifndef ZIPML_WITH_CUDA
  GTEST_SKIP() << "built without the CUDA kernels";
#else
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  at::manual_seed(9);
  const at::Tensor x = at::randn({7, 3001});
  for (Rounding rounding : {Rounding::Stochastic, Rounding::Nearest})
    for (Levels levels : {Levels::Uniform, Levels::Optimal, Levels::Codebook}) {
      const QuantizeOptions o = options_for(4, rounding, levels, Granularity::Channel);
      QuantizeOptions on_gpu = o;
      if (o.codebook()) on_gpu.codebook(o.codebook()->cuda());
      EXPECT_TRUE(bitwise_equal(zipml::fake_quantize(x.cuda(), on_gpu).cpu(), zipml::fake_quantize(x, o))) << label(levels);
      EXPECT_TRUE(bitwise_equal(zipml::quantize(x.cuda(), on_gpu).codes.cpu(), zipml::quantize(x, o).codes));
      if (rounding == Rounding::Stochastic) {
        const zipml::DoubleSampled a = zipml::double_sample(x.cuda(), on_gpu), b = zipml::double_sample(x, o);
        EXPECT_TRUE(bitwise_equal(a.index.cpu(), b.index));
        EXPECT_TRUE(bitwise_equal(a.up.cpu(), b.up));
      }
    }
#endif
}

}  // namespace
