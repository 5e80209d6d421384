#include "scaling.h"

#include <algorithm>
#include <string>

#include "dataset.h"

namespace zipml::linear {

float Scaling::apply(float a, int64_t col) const {
  if (a == hi[col] && factor[col] != 0.0f) return 1.0f;
  if (a == lo[col] && factor[col] != 0.0f) return -1.0f;
  const float u = (a - mid[col]) * factor[col];
  return std::min(1.0f, std::max(-1.0f, u));
}

Scaling Scaling::fit(const float* x, int64_t rows, int64_t cols) {
  Scaling s;
  s.lo.assign(cols, x[0]);
  s.hi.assign(cols, x[0]);
  for (int64_t c = 0; c < cols; ++c) s.lo[c] = s.hi[c] = x[c];
  for (int64_t r = 1; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      s.lo[c] = std::min(s.lo[c], x[r * cols + c]);
      s.hi[c] = std::max(s.hi[c], x[r * cols + c]);
    }
  s.mid.resize(cols);
  s.factor.resize(cols);
  for (int64_t c = 0; c < cols; ++c) {
    const double lo = s.lo[c], hi = s.hi[c];
    s.mid[c] = static_cast<float>(0.5 * (lo + hi));
    const double f = hi > lo ? 2.0 / (hi - lo) : 0.0;
    s.factor[c] = f <= 3.4e38 ? static_cast<float>(f) : 0.0f;
  }
  return s;
}

Scaling Scaling::identity(const float* x, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows * cols; ++i)
    if (!(x[i] >= -1.0f && x[i] <= 1.0f))
      throw InputError("X must lie in [-1, 1] when scaling is off (scale=False), found " + std::to_string(x[i]) +
                       " at row " + std::to_string(i / cols) + ", column " + std::to_string(i % cols));
  Scaling s;
  s.lo.assign(cols, -1.0f);
  s.hi.assign(cols, 1.0f);
  s.mid.assign(cols, 0.0f);
  s.factor.assign(cols, 1.0f);
  return s;
}

}  // namespace zipml::linear
