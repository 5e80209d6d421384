// Variance-optimal quantization levels (ZipML, arXiv 1611.05402, Section 5).
#pragma once
#include <cstdint>
#include <vector>

namespace zipml::detail {

// Data summarized between sorted candidate points c[0] < ... < c[m]: bin t holds the count and sum of
// the values in [c[t], c[t+1]].
struct CandidateBins {
  std::vector<double> points;  // m + 1 candidates
  std::vector<double> count, sum;  // m bins
};

// The distinct values of sorted `v` as candidates, each with its mass on it.
CandidateBins distinct_value_bins(const std::vector<float>& sorted);

// The candidates {lo} + the grid points -1 + 2t/grid strictly inside (lo, hi) + {hi}, with a histogram
// of `grid` equal bins over [-1, 1] (stats: count and sum per bin) merged into the intervals between
// consecutive candidates. lo and hi are the data's min and max.
CandidateBins merge_histogram(const double* stats, int64_t grid, float lo, float hi);

// What the dynamic program minimises for the data in bins [from, to) when a = c[from] and b = c[to] are
// consecutive levels: the stochastic-rounding variance sum (b - x)(x - a) plus sum x^2. The squares add
// the same to every choice of levels, so no statistic of them is needed.
double interval_cost(const CandidateBins& bins, int64_t from, int64_t to);

// Indices of at most k candidates, c[0] and c[m] included, that minimise the total variance: the
// dynamic program over candidates, O(k m^2) in the paper, here O(k m log m) by divide and conquer,
// exact because the interval cost is a Monge matrix.
std::vector<int64_t> optimal_candidate_subset(const CandidateBins& bins, int64_t k);

}  // namespace zipml::detail
