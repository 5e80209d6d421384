// The dynamic program of the variance-optimal levels (ZipML, arXiv 1611.05402, Section 5), free of
// torch so that the linear solvers (linear/) share it with the optimal_levels operator.
#include <algorithm>
#include <limits>

#include "optimal_levels.h"

namespace zipml::detail {

namespace {

struct PrefixSums {
  std::vector<double> n, s1;  // n[t] = sum of bins [0, t)
  explicit PrefixSums(const CandidateBins& b) : n(b.count.size() + 1), s1(n.size()) {
    for (size_t t = 0; t < b.count.size(); ++t) {
      n[t + 1] = n[t] + b.count[t];
      s1[t + 1] = s1[t] + b.sum[t];
    }
  }
  // sum over x in the bins of (c_b - x)(x - c_a) + x^2 = (c_a + c_b) S1 - c_a c_b n
  double cost(const std::vector<double>& c, int64_t a, int64_t b) const {
    const double cnt = n[b] - n[a], sx = s1[b] - s1[a];
    return (c[a] + c[b]) * sx - c[a] * c[b] * cnt;
  }
};

}  // namespace

CandidateBins distinct_value_bins(const std::vector<float>& sorted) {
  CandidateBins bins;
  for (float x : sorted) {
    if (bins.points.empty() || x != bins.points.back()) {
      bins.points.push_back(x);
      bins.count.push_back(0.0);
    }
    bins.count.back() += 1.0;
  }
  bins.count.pop_back();  // mass on the last point costs nothing in any interval
  for (size_t t = 0; t < bins.count.size(); ++t) bins.sum.push_back(bins.count[t] * bins.points[t]);
  return bins;
}

CandidateBins merge_histogram(const double* stats, int64_t grid, float lo, float hi) {
  CandidateBins bins;
  bins.points.push_back(lo);
  std::vector<int64_t> first_bin{0};  // histogram bin where each candidate interval starts
  for (int64_t t = 1; t < grid; ++t) {
    const float g = static_cast<float>(-1.0 + 2.0 * static_cast<double>(t) / static_cast<double>(grid));
    if (g > lo && g < hi) {
      bins.points.push_back(g);
      first_bin.push_back(t);
    }
  }
  if (hi > lo) {
    bins.points.push_back(hi);
    first_bin.push_back(grid);
  }
  const int64_t intervals = static_cast<int64_t>(bins.points.size()) - 1;
  bins.count.assign(intervals, 0.0);
  bins.sum.assign(intervals, 0.0);
  for (int64_t j = 0; j < intervals; ++j) {
    for (int64_t t = first_bin[j]; t < first_bin[j + 1]; ++t) {
      bins.count[j] += stats[2 * t];
      bins.sum[j] += stats[2 * t + 1];
    }
  }
  return bins;
}

double interval_cost(const CandidateBins& bins, int64_t from, int64_t to) {
  return PrefixSums(bins).cost(bins.points, from, to);
}

std::vector<int64_t> optimal_candidate_subset(const CandidateBins& bins, int64_t k) {
  const int64_t m = static_cast<int64_t>(bins.points.size()) - 1;
  std::vector<int64_t> all(m + 1);
  for (int64_t t = 0; t <= m; ++t) all[t] = t;
  if (m + 1 <= k) return all;
  const PrefixSums pre(bins);
  const double inf = std::numeric_limits<double>::infinity();
  // best[b]: least cost of levels chosen among c[0..b] that end at c[b], using `layer` levels. The
  // cost is the variance plus the sum of x^2 over bins [0, b), which is the same for every choice:
  // the histogram need not hold the squares.
  std::vector<double> prev(m + 1, inf), best(m + 1, inf);
  std::vector<std::vector<int32_t>> choice(k, std::vector<int32_t>(m + 1, 0));
  prev[0] = 0.0;
  for (int64_t layer = 1; layer < k; ++layer) {
    std::vector<int32_t>& arg = choice[layer];
    // best[b] = min over a < b of prev[a] + cost(a, b); the optimal a is non-decreasing in b.
    auto solve = [&](auto&& self, int64_t lo, int64_t hi, int64_t opt_lo, int64_t opt_hi) -> void {
      if (lo > hi) return;
      const int64_t mid = (lo + hi) / 2;
      double value = inf;
      int64_t at = opt_lo;
      for (int64_t a = opt_lo; a <= std::min(mid - 1, opt_hi); ++a) {
        const double v = prev[a] + pre.cost(bins.points, a, mid);
        if (v < value) {
          value = v;
          at = a;
        }
      }
      best[mid] = value;
      arg[mid] = static_cast<int32_t>(at);
      self(self, lo, mid - 1, opt_lo, at);
      self(self, mid + 1, hi, at, opt_hi);
    };
    std::fill(best.begin(), best.end(), inf);
    solve(solve, 1, m, 0, m - 1);
    std::swap(prev, best);
  }
  std::vector<int64_t> chosen{m};
  for (int64_t layer = k - 1; layer >= 1; --layer) chosen.push_back(choice[layer][chosen.back()]);
  std::reverse(chosen.begin(), chosen.end());
  return chosen;
}

}  // namespace zipml::detail
