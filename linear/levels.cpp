#include "levels.h"

#include <algorithm>
#include <string>

#include "../csrc/ops/optimal_levels.h"
#include "dataset.h"

namespace zipml::linear {
namespace {

using detail::CandidateBins;

// A histogram of `grid` equal bins over [-1, 1] merged between the candidates {min} + the grid
// points strictly inside (min, max) + {max} (the core's level_histogram + histogram_bins).
CandidateBins histogram_bins(const std::vector<float>& v, int64_t grid) {
  std::vector<double> st(static_cast<size_t>(grid) * 2, 0.0);
  float lo = v[0], hi = v[0];
  const float half_bins = 0.5f * static_cast<float>(grid);
  for (float x : v) {
    lo = std::min(lo, x);
    hi = std::max(hi, x);
    const int64_t b = std::min<int64_t>(static_cast<int64_t>((x + 1.0f) * half_bins), grid - 1);
    st[2 * b] += 1.0;
    st[2 * b + 1] += x;
  }
  return detail::merge_histogram(st.data(), grid, lo, hi);
}

std::vector<float> column_levels(const std::vector<float>& v, int count, int64_t candidates) {
  CandidateBins bins;
  if (static_cast<int64_t>(v.size()) <= candidates) {
    std::vector<float> sorted = v;
    std::sort(sorted.begin(), sorted.end());
    bins = detail::distinct_value_bins(sorted);
  } else {
    const int64_t grid = (candidates + count - 2) / (count - 1) * (count - 1);
    bins = histogram_bins(v, grid);
  }
  std::vector<float> levels;
  for (int64_t t : detail::optimal_candidate_subset(bins, count)) levels.push_back(static_cast<float>(bins.points[t]));
  // Fewer distinct candidates than levels: fill with uniform levels, which receive no data.
  const kernel::Levels grid{nullptr, count};
  for (int i = 0; static_cast<int>(levels.size()) < count && i < count; ++i)
    if (std::find(levels.begin(), levels.end(), grid.at(i)) == levels.end()) levels.push_back(grid.at(i));
  std::sort(levels.begin(), levels.end());
  return levels;
}

}  // namespace

void check_data_bits(int64_t bits, const char* name) {
  if (bits < 1 || bits > 8)
    throw InputError(std::string(name) + " must be one of 1, 2, 3, 4, 5, 6, 7, 8, got " + std::to_string(bits));
}

float FeatureLevels::widest_interval(int64_t col) const {
  const kernel::Levels l = of(col);
  float widest = 0.0f;
  for (int i = 0; i + 1 < l.count; ++i) widest = std::max(widest, l.at(i + 1) - l.at(i));
  return widest;
}

FeatureLevels FeatureLevels::make_uniform(int bits) {
  check_data_bits(bits);
  FeatureLevels f;
  f.bits = bits;
  f.count = 1 << bits;
  return f;
}

FeatureLevels FeatureLevels::make_optimal(const float* u, int64_t rows, int64_t cols, int bits, int64_t candidates) {
  check_data_bits(bits);
  if (candidates < 2) throw InputError("candidates must be at least 2, got " + std::to_string(candidates));
  FeatureLevels f;
  f.bits = bits;
  f.count = 1 << bits;
  f.uniform = false;
  f.table.resize(static_cast<size_t>(cols) * f.count);
  std::vector<float> column(rows);
  for (int64_t c = 0; c < cols; ++c) {
    for (int64_t r = 0; r < rows; ++r) column[r] = u[r * cols + c];
    const std::vector<float> levels = column_levels(column, f.count, candidates);
    std::copy(levels.begin(), levels.end(), f.table.begin() + c * f.count);
  }
  return f;
}

}  // namespace zipml::linear
