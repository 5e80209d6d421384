// Argument checking and option resolution shared by the public zipml operators: one place that
// turns (bits, levels, codebook, granularity, scale) into the scale tensor and codebook a kernel
// runs with, and words the errors users see.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string_view>
#include <vector>

namespace zipml::detail {

enum class Granularity { Tensor, Channel, Row };

int64_t parse_rounding(std::string_view rounding, const char* op);
Granularity parse_granularity(std::string_view granularity, const char* op);

void check_float_input(const at::Tensor& x, const char* op, const char* name = "x");
void check_bits(int64_t bits, const char* op);

// t as float32 (t itself when it already is: operators must not return an alias of an input
// through a no-op aten::to, which schema checks reject).
at::Tensor to_float(const at::Tensor& t);
at::Tensor to_options(const at::Tensor& t, const at::TensorOptions& options);

// True for fake, meta and functional tensors, whose values cannot be read.
bool values_unavailable(const at::Tensor& t);

// The keepdim shape of the scale of x for a granularity (broadcastable against x).
std::vector<int64_t> scale_shape(const at::Tensor& x, Granularity granularity);

// max |x| over each scale group, float32, in the keepdim shape; NaN or Inf when x has them.
at::Tensor absmax_scale(const at::Tensor& x, Granularity granularity);

// The granularity whose scale shape `scale` has (1-element scales are per tensor).
Granularity granularity_of_scale(const at::Tensor& x, const at::Tensor& scale, const char* op);

// Elementwise 1/s (0 where s is 0 or 1/s overflows), as the kernels compute it.
at::Tensor inverse_scale(const at::Tensor& scale);

// The uniform grid of `count` levels on [-1, 1], bit-identical to the kernels' arithmetic.
at::Tensor uniform_levels(int64_t count, const at::TensorOptions& options);

// What a kernel needs to quantize x.
struct Resolved {
  at::Tensor scale;                 // float32, keepdim shape, on x's device
  std::optional<at::Tensor> table;  // float32 codebook; none for the uniform grid
  int64_t num_levels;
  bool may_clip;                    // some |x| may fall outside the levels' range

  at::Tensor levels() const;        // the codebook as a tensor, uniform grid included
};

Resolved resolve(const at::Tensor& x, int64_t bits, std::string_view levels,
                 const std::optional<at::Tensor>& codebook, std::string_view granularity,
                 const std::optional<at::Tensor>& scale, int64_t candidates, const char* op);

// Checks a (scale, levels) pair that came with codes of shape `codes`.
void check_codes_scale_levels(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& levels,
                              const char* op, const char* codes_name = "codes");

}  // namespace zipml::detail
