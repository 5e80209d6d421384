// Variance-optimal levels (ZipML, Section 5): the dynamic program of csrc/ops/optimal_levels.h
// equals brute force over all subsets of candidates, and zipml::optimal_levels is never worse than
// the uniform grid.
#include <gtest/gtest.h>
#include <zipml/zipml.h>

#include <algorithm>
#include <limits>
#include <random>
#include <vector>

#include "csrc/ops/optimal_levels.h"
#include "reference.h"

namespace {

using zipml::detail::CandidateBins;

// Bins of raw data between sorted candidate points: bin t holds the data in [c_t, c_t+1)
// (the last bin also c_m).
CandidateBins bins_of(const std::vector<double>& points, const std::vector<double>& data) {
  CandidateBins bins;
  bins.points = points;
  const size_t m = points.size() - 1;
  bins.count.assign(m, 0.0);
  bins.sum.assign(m, 0.0);
  for (double x : data) {
    size_t t = 0;
    while (t + 1 < m && x >= points[t + 1]) ++t;
    bins.count[t] += 1.0;
    bins.sum[t] += x;
  }
  return bins;
}

std::vector<double> chosen_points(const CandidateBins& bins, const std::vector<int64_t>& subset) {
  std::vector<double> out;
  for (int64_t t : subset) out.push_back(bins.points[t]);
  return out;
}

// Least total variance over every choice of at most k candidates that keeps both end points.
double brute_force_minimum(const std::vector<double>& points, const std::vector<double>& data, int k) {
  const int m = int(points.size()) - 1;
  double best = std::numeric_limits<double>::infinity();
  for (uint32_t mask = 0; mask < (1u << (m - 1)); ++mask) {
    if (__builtin_popcount(mask) > k - 2) continue;
    std::vector<double> levels{points[0]};
    for (int i = 1; i < m; ++i)
      if (mask >> (i - 1) & 1) levels.push_back(points[i]);
    levels.push_back(points[m]);
    best = std::min(best, zipml::reference::total_variance(data, levels));
  }
  return best;
}

std::vector<double> sorted_uniform(int n, double lo, double hi, std::mt19937& gen) {
  std::uniform_real_distribution<double> u(lo, hi);
  std::vector<double> v(n);
  for (auto& x : v) x = u(gen);
  std::sort(v.begin(), v.end());
  return v;
}

TEST(OptimalLevels, IntervalCostIsTheVariancePlusTheSquares) {
  std::mt19937 gen(21);
  const std::vector<double> points = sorted_uniform(9, -1.0, 1.0, gen);
  std::vector<double> data = sorted_uniform(200, points.front(), points.back(), gen);
  const CandidateBins bins = bins_of(points, data);
  for (int64_t a = 0; a < 9; ++a)
    for (int64_t b = a + 1; b < 9; ++b) {
      double naive = 0.0;
      for (double x : data)
        if (x >= points[a] && (x < points[b] || b == 8)) naive += (points[b] - x) * (x - points[a]) + x * x;
      EXPECT_NEAR(zipml::detail::interval_cost(bins, a, b), naive, 1e-9 * (1.0 + std::abs(naive)));
    }
}

// Data strictly between candidates (the histogram case) and data on the candidates (the
// distinct-values case), every level count.
TEST(OptimalLevels, DynamicProgramEqualsBruteForce) {
  std::mt19937 gen(22);
  for (int trial = 0; trial < 60; ++trial) {
    const int m = 2 + trial % 11;  // up to 13 candidates
    std::vector<double> points = sorted_uniform(m + 1, -1.0, 1.0, gen);
    std::vector<double> data;
    if (trial % 2 == 0) {
      std::exponential_distribution<double> skew(3.0);
      for (int i = 0; i < 40; ++i) data.push_back(std::min(points.back(), points.front() + skew(gen)));
    } else {
      std::uniform_int_distribution<int> pick(0, m);
      for (int i = 0; i < 15; ++i) data.push_back(points[pick(gen)]);
      data.push_back(points.front());
      data.push_back(points.back());
    }
    const CandidateBins bins = bins_of(points, data);
    for (int k = 2; k <= m + 2; ++k) {
      const std::vector<int64_t> subset = zipml::detail::optimal_candidate_subset(bins, k);
      ASSERT_LE(int(subset.size()), k);
      ASSERT_EQ(subset.front(), 0);
      ASSERT_EQ(subset.back(), m);
      ASSERT_TRUE(std::is_sorted(subset.begin(), subset.end()));
      const double dp = zipml::reference::total_variance(data, chosen_points(bins, subset));
      const double brute = brute_force_minimum(points, data, k);
      ASSERT_NEAR(dp, brute, 1e-10 * (1.0 + brute)) << "trial " << trial << " m=" << m << " k=" << k;
    }
  }
}

std::vector<double> normalized(const at::Tensor& x) {
  const at::Tensor v = (x * (1.0f / x.abs().max())).contiguous();
  return std::vector<double>(v.data_ptr<float>(), v.data_ptr<float>() + v.numel());
}

std::vector<double> as_vector(const at::Tensor& levels) {
  const at::Tensor l = levels.to(at::kDouble).contiguous();
  return std::vector<double>(l.data_ptr<double>(), l.data_ptr<double>() + l.numel());
}

// Few values (at most `candidates`): the candidates are the distinct values, and the levels are
// the brute-force optimum over them.
TEST(OptimalLevels, OperatorIsBruteForceOptimumOnSmallInputs) {
  at::manual_seed(23);
  for (int trial = 0; trial < 10; ++trial) {
    const at::Tensor x = at::randn({11}, at::kFloat);
    const std::vector<double> v = normalized(x);
    std::vector<double> distinct = v;
    std::sort(distinct.begin(), distinct.end());
    for (int64_t k : {2, 4, 8}) {
      const std::vector<double> levels = as_vector(zipml::optimal_levels(x, k));
      ASSERT_EQ(int64_t(levels.size()), k);
      ASSERT_TRUE(std::is_sorted(levels.begin(), levels.end()));
      EXPECT_NEAR(zipml::reference::total_variance(v, levels), brute_force_minimum(distinct, v, int(k)), 1e-6)
          << "trial " << trial << " k=" << k;
    }
  }
}

// Many values (the histogram path) from light- and heavy-tailed distributions: never worse than
// the uniform grid, strictly better where the data is not uniform.
TEST(OptimalLevels, NeverWorseThanUniform) {
  at::manual_seed(24);
  const std::vector<at::Tensor> inputs = {at::randn({5000}), at::rand({5000}) * 2 - 1,
                                          at::randn({5000}).pow(3), at::randn({300})};
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::vector<double> v = normalized(inputs[i]);
    const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    for (int bits = 1; bits <= 4; ++bits) {
      const int64_t k = int64_t(1) << bits;
      const std::vector<double> optimal = as_vector(zipml::optimal_levels(inputs[i], k, /*candidates=*/512));
      ASSERT_LE(optimal.front(), *lo);
      ASSERT_GE(optimal.back(), *hi);
      std::vector<double> uniform;
      for (int64_t j = 0; j < k; ++j) uniform.push_back(-1.0 + 2.0 * j / (k - 1));
      const double var_opt = zipml::reference::total_variance(v, optimal);
      const double var_uniform = zipml::reference::total_variance(v, uniform);
      EXPECT_LE(var_opt, var_uniform * (1 + 1e-9)) << "input " << i << " bits " << bits;
      if (i == 2 && bits >= 2) EXPECT_LT(var_opt, 0.9 * var_uniform) << "heavy tails, bits " << bits;
    }
  }
}

}  // namespace
