// optimal_levels: candidates from the data (its distinct values when there are at most `candidates`
// of them, else a grid of about `candidates` bins over [-1, 1] whose points include the uniform
// levels, so the result is never worse than uniform), then the exact dynamic program over them.
#include "optimal_levels.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../../kernels/common/quantize.h"
#include "common.h"

namespace zipml::detail {

namespace {

// Candidates and bins from the data itself: each distinct value is a candidate with its mass on it.
CandidateBins data_bins(const at::Tensor& x, const at::Tensor& scale) {
  const at::Tensor xs = to_float(x.detach()).contiguous().cpu();
  const at::Tensor ss = scale.contiguous().cpu();
  const int64_t numel = xs.numel(), inner = numel / std::max<int64_t>(ss.numel(), 1);
  const float* xp = xs.data_ptr<float>();
  const float* sp = ss.data_ptr<float>();
  const kernel::Levels unit{nullptr, 2};
  std::vector<float> v(numel);
  for (int64_t i = 0; i < numel; ++i) {
    const float s = sp[i / inner];
    TORCH_CHECK_VALUE(kernel::is_finite(xp[i]) && kernel::valid_scale(s),
                      "optimal_levels: x contains NaN or Inf (or the scale does)");
    v[i] = kernel::normalize(xp[i], kernel::inverse_scale(s), unit);
  }
  std::sort(v.begin(), v.end());
  return distinct_value_bins(v);
}

// Candidates {min v} + the grid points -1 + 2t/B strictly between min v and max v + {max v}; the
// histogram bins of the kernel merged into the intervals between consecutive candidates.
CandidateBins histogram_bins(const at::Tensor& x, const at::Tensor& scale, int64_t grid) {
  static const auto histogram = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("zipml::_level_histogram", "")
                                    .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                              int64_t)>();
  auto [stats_dev, range_dev] = histogram.call(x.detach(), scale, grid);
  const at::Tensor stats = stats_dev.cpu(), range = range_dev.cpu();
  return merge_histogram(stats.data_ptr<double>(), grid, range.data_ptr<float>()[0], range.data_ptr<float>()[1]);
}

at::Tensor optimal_levels(const at::Tensor& x, int64_t num_levels, int64_t candidates,
                          const std::optional<at::Tensor>& scale_in) {
  const char* op = "optimal_levels";
  check_float_input(x, op);
  TORCH_CHECK_VALUE(num_levels >= 2 && num_levels <= 256, op, ": num_levels must be from 2 to 256, got ",
                    num_levels);
  TORCH_CHECK_VALUE(candidates >= 2, op, ": candidates must be at least 2, got ", candidates);
  at::Tensor scale;
  if (scale_in) {
    check_float_input(*scale_in, op, "scale");
    TORCH_CHECK_VALUE(scale_in->device() == x.device(), op, ": scale is on ", scale_in->device(), " but x is on ",
                      x.device());
    scale = to_float(scale_in->detach()).contiguous();
    granularity_of_scale(x, scale, op);
  } else {
    scale = absmax_scale(x, Granularity::Tensor);
  }
  const at::TensorOptions out_options = x.options().dtype(at::kFloat);
  if (values_unavailable(x)) return at::empty({num_levels}, out_options);

  CandidateBins bins;
  if (x.numel() <= candidates) {
    bins = data_bins(x, scale);
  } else {
    // A multiple of K-1 bins puts every uniform level on the grid.
    const int64_t grid = (candidates + num_levels - 2) / (num_levels - 1) * (num_levels - 1);
    bins = histogram_bins(x, scale, grid);
  }
  std::vector<float> levels;
  if (!bins.points.empty())
    for (int64_t t : optimal_candidate_subset(bins, num_levels)) levels.push_back(static_cast<float>(bins.points[t]));
  // Fewer distinct candidates than levels: fill with uniform levels, which receive no data.
  const at::Tensor grid_levels = uniform_levels(num_levels, at::kFloat);
  const float* u = grid_levels.data_ptr<float>();
  for (int64_t i = 0; static_cast<int64_t>(levels.size()) < num_levels && i < num_levels; ++i)
    if (std::find(levels.begin(), levels.end(), u[i]) == levels.end()) levels.push_back(u[i]);
  std::sort(levels.begin(), levels.end());
  return to_options(at::tensor(levels, at::kFloat), out_options);
}

}  // namespace

TORCH_LIBRARY_IMPL(zipml, CompositeExplicitAutograd, m) { m.impl("optimal_levels", &optimal_levels); }

}  // namespace zipml::detail
