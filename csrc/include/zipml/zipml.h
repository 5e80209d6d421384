// torch-zipml: the public C++ API. The same operators as the Python package (torch_zipml), called
// through the PyTorch dispatcher, so CPU and CUDA tensors and autograd work alike.
//
//   #include <zipml/zipml.h>
//   at::Tensor w_q = zipml::fake_quantize(w, zipml::QuantizeOptions(4).levels(zipml::Levels::Optimal).seed(7));
//
// Method: ZipML (Zhang, Li, Kara, Alistarh, Liu, Zhang, ICML 2017, arXiv 1611.05402).
#pragma once
#include <ATen/ATen.h>
#include <torch/arg.h>

#include <cstdint>
#include <optional>
#include <utility>

namespace zipml {

// Stochastic rounding is unbiased, E[Q(v)] = v (Section 2); nearest rounding is deterministic.
enum class Rounding { Stochastic, Nearest };

// Uniform: 2^bits evenly spaced levels with endpoints -1 and 1. Optimal: the variance-optimal
// levels for the tensor (Section 5). Codebook: the sorted tensor given with codebook().
enum class Levels { Uniform, Optimal, Codebook };

// Which elements share one scale (max |x| unless a scale tensor is given).
enum class Granularity { Tensor, Channel, Row };

struct QuantizeOptions {
  explicit QuantizeOptions(int64_t bits) : bits_(bits) {}
  TORCH_ARG(int64_t, bits);
  TORCH_ARG(Rounding, rounding) = Rounding::Stochastic;
  TORCH_ARG(Levels, levels) = Levels::Uniform;
  TORCH_ARG(std::optional<at::Tensor>, codebook) = std::nullopt;  // with Levels::Codebook
  TORCH_ARG(Granularity, granularity) = Granularity::Tensor;
  TORCH_ARG(std::optional<at::Tensor>, scale) = std::nullopt;     // overrides the max-abs scale
  TORCH_ARG(std::optional<uint64_t>, seed) = std::nullopt;        // none: drawn from the default generator
  TORCH_ARG(uint64_t, offset) = 0;                                // Philox stream within the seed
  TORCH_ARG(int64_t, candidates) = 1024;                          // candidate points for Levels::Optimal
};

// A tensor quantized to b-bit codes: x ~ levels[codes] * scale.
struct QuantizedTensor {
  at::Tensor codes;   // uint8, the shape of x
  at::Tensor scale;   // float32, broadcastable against x
  at::Tensor levels;  // float32, sorted, at most 2^bits values in [-1, 1]
  int64_t bits = 0;
  bool uniform = true;  // levels are the uniform grid, implied by bits (not stored)

  at::Tensor dequantize(at::ScalarType dtype = at::kFloat) const;
  at::Tensor pack() const;  // the codes at `bits` bits each
  int64_t nbytes() const;   // packed codes + scale + levels unless uniform
};

// Two independent stochastic samples of each value, stored as the interval index (ceil(log2(K-1))
// bits) plus one round-up bit per sample (Section 4, double sampling).
struct DoubleSampled {
  at::Tensor index;   // uint8, the shape of x
  at::Tensor up;      // uint8: bit 0 rounds sample 1 up, bit 1 sample 2
  at::Tensor scale;
  at::Tensor levels;
  int64_t bits = 0;
  bool uniform = true;

  std::pair<at::Tensor, at::Tensor> decode(at::ScalarType dtype = at::kFloat) const;
  at::Tensor first(at::ScalarType dtype = at::kFloat) const { return decode(dtype).first; }
  at::Tensor second(at::ScalarType dtype = at::kFloat) const { return decode(dtype).second; }
  int64_t nbytes() const;  // packed index + packed up bits + scale + levels unless uniform
};

QuantizedTensor quantize(const at::Tensor& x, const QuantizeOptions& options);
at::Tensor dequantize(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& levels,
                      at::ScalarType dtype = at::kFloat);
// quantize then dequantize in one pass; backward is the straight-through estimator.
at::Tensor fake_quantize(const at::Tensor& x, const QuantizeOptions& options);
at::Tensor& fake_quantize_out(at::Tensor& out, const at::Tensor& x, const QuantizeOptions& options);
// Identity forward; backward quantizes the gradient stochastically (unbiased).
at::Tensor quantize_grad(const at::Tensor& x, int64_t bits, Granularity granularity = Granularity::Tensor,
                         std::optional<uint64_t> seed = std::nullopt, uint64_t offset = 0);
DoubleSampled double_sample(const at::Tensor& x, const QuantizeOptions& options);
// num_levels variance-optimal levels in units of the scale (max |x| unless given).
at::Tensor optimal_levels(const at::Tensor& x, int64_t num_levels, int64_t candidates = 1024,
                          const std::optional<at::Tensor>& scale = std::nullopt);
at::Tensor pack(const at::Tensor& codes, int64_t bits);
at::Tensor unpack(const at::Tensor& packed, int64_t bits, int64_t numel);

// A fresh seed from PyTorch's default CPU generator (reproducible under torch::manual_seed).
uint64_t draw_seed();

}  // namespace zipml
