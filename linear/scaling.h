// Per-feature scaling to [-1, 1], fitted on the training data and kept with the model (ZipML,
// arXiv 1611.05402, Section 2: the quantizer works on a known, bounded range; the authors' code
// min-max normalises each column). The 1-bit grid of the core is {-1, 1}, which covers [-1, 1]
// unbiasedly, so no separate [0, 1] range is needed for 1 bit.
#pragma once
#include <cstdint>
#include <vector>

namespace zipml::linear {

struct Scaling {
  // u = clamp((a - mid) * factor, -1, 1), with u = -1 at a = lo and u = 1 at a = hi exactly. A
  // constant feature has factor 0 and maps to 0 (its effect is the intercept's).
  std::vector<float> lo, hi, mid, factor;

  int64_t cols() const { return static_cast<int64_t>(mid.size()); }
  float apply(float a, int64_t col) const;

  // Min-max over the rows of x (rows x cols).
  static Scaling fit(const float* x, int64_t rows, int64_t cols);
  // u = a for data already in [-1, 1]; throws InputError naming X otherwise.
  static Scaling identity(const float* x, int64_t rows, int64_t cols);
};

}  // namespace zipml::linear
