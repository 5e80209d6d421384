// The C++ API of zipml.h: thin calls through the dispatcher to the operators of csrc/ops.
#include <zipml/zipml.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <limits>

#include "../kernels/common/pack.h"
#include "../kernels/common/quantize.h"

namespace zipml {
namespace {

using OptTensor = std::optional<at::Tensor>;

const char* name(Rounding r) { return r == Rounding::Nearest ? "nearest" : "stochastic"; }
const char* name(Levels l) { return l == Levels::Optimal ? "optimal" : l == Levels::Codebook ? "codebook" : "uniform"; }
const char* name(Granularity g) {
  return g == Granularity::Channel ? "channel" : g == Granularity::Row ? "row" : "tensor";
}

// A given scale's shape decides the granularity.
const char* granularity_name(const QuantizeOptions& o) { return o.scale() ? "auto" : name(o.granularity()); }

int64_t seed_of(const std::optional<uint64_t>& seed) {
  return static_cast<int64_t>(seed ? *seed : draw_seed());
}

template <class Signature>
c10::TypedOperatorHandle<Signature> op(const char* schema, const char* overload = "") {
  return c10::Dispatcher::singleton().findSchemaOrThrow(schema, overload).typed<Signature>();
}

int64_t extra_bytes(const at::Tensor& scale, const at::Tensor& levels, bool uniform) {
  return scale.numel() * 4 + (uniform ? 0 : levels.numel() * 4);
}

}  // namespace

uint64_t draw_seed() {
  return static_cast<uint64_t>(at::randint(std::numeric_limits<int64_t>::max(), {}, at::kLong).item<int64_t>());
}

QuantizedTensor quantize(const at::Tensor& x, const QuantizeOptions& o) {
  static const auto h = op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, int64_t, c10::string_view, c10::string_view, const OptTensor&, c10::string_view,
      const OptTensor&, int64_t, int64_t, int64_t)>("zipml::quantize");
  auto [codes, scale, levels] = h.call(x, o.bits(), name(o.rounding()), name(o.levels()), o.codebook(),
                                       granularity_name(o), o.scale(), seed_of(o.seed()),
                                       static_cast<int64_t>(o.offset()), o.candidates());
  return QuantizedTensor{codes, scale, levels, o.bits(), o.levels() == Levels::Uniform};
}

at::Tensor dequantize(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& levels,
                      at::ScalarType dtype) {
  static const auto h = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, at::ScalarType)>(
      "zipml::dequantize");
  return h.call(codes, scale, levels, dtype);
}

at::Tensor fake_quantize(const at::Tensor& x, const QuantizeOptions& o) {
  static const auto h = op<at::Tensor(const at::Tensor&, int64_t, c10::string_view, c10::string_view,
                                      const OptTensor&, c10::string_view, const OptTensor&, int64_t, int64_t,
                                      int64_t)>("zipml::fake_quantize");
  return h.call(x, o.bits(), name(o.rounding()), name(o.levels()), o.codebook(), granularity_name(o), o.scale(),
                seed_of(o.seed()), static_cast<int64_t>(o.offset()), o.candidates());
}

at::Tensor& fake_quantize_out(at::Tensor& out, const at::Tensor& x, const QuantizeOptions& o) {
  static const auto h = op<void(const at::Tensor&, int64_t, c10::string_view, c10::string_view, const OptTensor&,
                                c10::string_view, const OptTensor&, int64_t, int64_t, int64_t, at::Tensor&)>(
      "zipml::fake_quantize", "out");
  h.call(x, o.bits(), name(o.rounding()), name(o.levels()), o.codebook(), granularity_name(o), o.scale(),
         seed_of(o.seed()), static_cast<int64_t>(o.offset()), o.candidates(), out);
  return out;
}

at::Tensor quantize_grad(const at::Tensor& x, int64_t bits, Granularity granularity, std::optional<uint64_t> seed,
                         uint64_t offset) {
  static const auto h =
      op<at::Tensor(const at::Tensor&, int64_t, c10::string_view, int64_t, int64_t)>("zipml::quantize_grad");
  return h.call(x, bits, name(granularity), seed_of(seed), static_cast<int64_t>(offset));
}

DoubleSampled double_sample(const at::Tensor& x, const QuantizeOptions& o) {
  static const auto h = op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, int64_t, c10::string_view, const OptTensor&, c10::string_view, const OptTensor&, int64_t,
      int64_t, int64_t)>("zipml::double_sample");
  TORCH_CHECK_VALUE(o.rounding() == Rounding::Stochastic, "double_sample: samples are stochastic; rounding must be ",
                    "Rounding::Stochastic");
  auto [index, up, scale, levels] = h.call(x, o.bits(), name(o.levels()), o.codebook(), granularity_name(o),
                                           o.scale(), seed_of(o.seed()), static_cast<int64_t>(o.offset()),
                                           o.candidates());
  return DoubleSampled{index, up, scale, levels, o.bits(), o.levels() == Levels::Uniform};
}

at::Tensor optimal_levels(const at::Tensor& x, int64_t num_levels, int64_t candidates, const OptTensor& scale) {
  static const auto h = op<at::Tensor(const at::Tensor&, int64_t, int64_t, const OptTensor&)>("zipml::optimal_levels");
  return h.call(x, num_levels, candidates, scale);
}

at::Tensor pack(const at::Tensor& codes, int64_t bits) {
  static const auto h = op<at::Tensor(const at::Tensor&, int64_t)>("zipml::pack");
  return h.call(codes, bits);
}

at::Tensor unpack(const at::Tensor& packed, int64_t bits, int64_t numel) {
  static const auto h = op<at::Tensor(const at::Tensor&, int64_t, int64_t)>("zipml::unpack");
  return h.call(packed, bits, numel);
}

at::Tensor QuantizedTensor::dequantize(at::ScalarType dtype) const { return zipml::dequantize(codes, scale, levels, dtype); }

at::Tensor QuantizedTensor::pack() const { return zipml::pack(codes, bits); }

int64_t QuantizedTensor::nbytes() const {
  return kernel::packed_bytes(codes.numel(), static_cast<int>(bits)) + extra_bytes(scale, levels, uniform);
}

std::pair<at::Tensor, at::Tensor> DoubleSampled::decode(at::ScalarType dtype) const {
  static const auto h = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, at::ScalarType)>(
      "zipml::double_sample_decode");
  auto [a, b] = h.call(index, up, scale, levels, dtype);
  return {a, b};
}

int64_t DoubleSampled::nbytes() const {
  const int index_bits = kernel::interval_bits(static_cast<int>(levels.numel()));
  return kernel::packed_bytes(index.numel(), index_bits) + kernel::packed_bytes(up.numel(), 2) +
         extra_bytes(scale, levels, uniform);
}

}  // namespace zipml
