// Quantization levels per feature: the core's uniform grid of 2^bits points on [-1, 1], or the
// variance-optimal levels of each feature (ZipML, arXiv 1611.05402, Section 5) computed with the
// core's dynamic program (csrc/ops/optimal_levels.h), candidates chosen exactly as the core's
// optimal_levels operator chooses them for a column with scale 1.
#pragma once
#include <cstdint>
#include <vector>

#include "../kernels/common/quantize.h"

namespace zipml::linear {

struct FeatureLevels {
  int bits = 0;
  int count = 0;  // K = 2^bits levels
  bool uniform = true;
  std::vector<float> table;  // cols * K sorted levels per feature; empty for the uniform grid

  kernel::Levels of(int64_t col) const {
    return uniform ? kernel::Levels{nullptr, count} : kernel::Levels{table.data() + col * count, count};
  }
  // Largest gap between consecutive levels of a feature: the most a stochastic sample can move.
  float widest_interval(int64_t col) const;

  static FeatureLevels make_uniform(int bits);
  // u: rows x cols, every value in [-1, 1].
  static FeatureLevels make_optimal(const float* u, int64_t rows, int64_t cols, int bits, int64_t candidates);
};

// Throws InputError naming `name` unless bits is one of 1..8.
void check_data_bits(int64_t bits, const char* name = "bits");

}  // namespace zipml::linear
