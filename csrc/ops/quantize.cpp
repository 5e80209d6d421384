// The public quantization operators: option resolution (common.h) in front of the device kernels,
// and their autograd, registered in C++ so that LibTorch users get the same backward as Python.
#include <torch/autograd.h>
#include <ATen/ExpandUtils.h>
#include <torch/library.h>

#include "../../kernels/common/quantize.h"
#include "common.h"

namespace zipml::detail {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

// Typed handles of the device kernels (schemas in schemas.cpp).
const auto& fake_quantize_kernel() {
  static const auto h = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("zipml::_fake_quantize_into", "")
                            .typed<void(const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t, int64_t,
                                        int64_t, int64_t, at::Tensor&)>();
  return h;
}
const auto& quantize_kernel() {
  static const auto h = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("zipml::_quantize_codes", "")
                            .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t,
                                              int64_t, int64_t, int64_t)>();
  return h;
}
const auto& double_sample_kernel() {
  static const auto h = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("zipml::_double_sample_codes", "")
                            .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                      const OptTensor&, int64_t, int64_t, int64_t)>();
  return h;
}
const auto& dequantize_kernel() {
  static const auto h = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("zipml::_dequantize_codes", "")
                            .typed<at::Tensor(const at::Tensor&, const OptTensor&, int64_t, const at::Tensor&,
                                              const at::Tensor&, at::ScalarType)>();
  return h;
}

struct FakeQuantized {
  at::Tensor out;
  Resolved resolved;
};

FakeQuantized run_fake_quantize(const at::Tensor& x, int64_t bits, c10::string_view rounding,
                                c10::string_view levels, const OptTensor& codebook, c10::string_view granularity,
                                const OptTensor& scale, int64_t seed, int64_t offset, int64_t candidates,
                                const OptTensor& out, const char* op) {
  const int64_t mode = parse_rounding(rounding, op);
  Resolved r = resolve(x, bits, levels, codebook, granularity, scale, candidates, op);
  at::Tensor dst;
  if (out) {
    TORCH_CHECK_TYPE(out->scalar_type() == x.scalar_type(), op, ": out must have the dtype of x (",
                     x.scalar_type(), "), got ", out->scalar_type());
    TORCH_CHECK_VALUE(out->device() == x.device(), op, ": out is on ", out->device(), " but x is on ", x.device());
    TORCH_CHECK_VALUE(out->sizes() == x.sizes(), op, ": out must have the shape of x ", x.sizes(), ", got ",
                      out->sizes());
    dst = *out;
  } else {
    dst = at::empty_like(x, at::MemoryFormat::Contiguous);
  }
  fake_quantize_kernel().call(x, r.scale, r.table, r.num_levels, mode, seed, offset, dst);
  return {dst, std::move(r)};
}

at::Tensor fake_quantize(const at::Tensor& x, int64_t bits, c10::string_view rounding, c10::string_view levels,
                         const OptTensor& codebook, c10::string_view granularity, const OptTensor& scale, int64_t seed,
                         int64_t offset, int64_t candidates) {
  return run_fake_quantize(x, bits, rounding, levels, codebook, granularity, scale, seed, offset, candidates,
                           std::nullopt, "fake_quantize")
      .out;
}

void fake_quantize_out(const at::Tensor& x, int64_t bits, c10::string_view rounding, c10::string_view levels,
                       const OptTensor& codebook, c10::string_view granularity, const OptTensor& scale, int64_t seed,
                       int64_t offset, int64_t candidates, at::Tensor& out) {
  run_fake_quantize(x, bits, rounding, levels, codebook, granularity, scale, seed, offset, candidates, out,
                    "fake_quantize");
}

// 1 where x lies within the levels' range [L_0 * s, L_K-1 * s], else 0, in x's dtype. Uniform and
// optimal levels span [-1, 1] in units of the scale as far as clipping goes: optimal levels end at
// the extreme normalised values, which are clamped to [-1, 1].
at::Tensor ste_mask(const at::Tensor& x, c10::string_view levels, const OptTensor& codebook,
                    c10::string_view granularity, const OptTensor& scale) {
  const char* op = "fake_quantize backward";
  const Resolved r = resolve(x, 8, levels == "codebook" ? levels : "uniform", codebook, granularity, scale, 0, op);
  const at::Tensor table = r.levels();
  const at::Tensor v = to_float(x) * inverse_scale(r.scale);
  return ((v >= table.narrow(0, 0, 1)) & (v <= table.narrow(0, table.numel() - 1, 1))).to(x.scalar_type());
}

// Straight-through estimator: the gradient passes unchanged where x lies within the levels' range
// and is zero where the quantizer clipped x, which only a given scale or a codebook can make happen.
// Shape-free on purpose: torch.compile traces it with symbolic shapes.
class FakeQuantizeFunction : public torch::autograd::Function<FakeQuantizeFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t bits, c10::string_view rounding,
                            c10::string_view levels, const OptTensor& codebook, c10::string_view granularity,
                            const OptTensor& scale, int64_t seed, int64_t offset, int64_t candidates) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("zipml::fake_quantize", "")
                               .typed<at::Tensor(const at::Tensor&, int64_t, c10::string_view, c10::string_view,
                                                 const OptTensor&, c10::string_view, const OptTensor&, int64_t,
                                                 int64_t, int64_t)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    const bool may_clip = scale.has_value() || levels == "codebook";
    ctx->saved_data["may_clip"] = may_clip;
    if (may_clip) {
      ctx->saved_data["levels"] = std::string(levels);
      ctx->saved_data["granularity"] = std::string(granularity);
      ctx->save_for_backward({x, codebook.value_or(at::Tensor()), scale.value_or(at::Tensor())});
    }
    return op.call(x, bits, rounding, levels, codebook, granularity, scale, seed, offset, candidates);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto mask_op = c10::Dispatcher::singleton()
                                    .findSchemaOrThrow("zipml::_ste_mask", "")
                                    .typed<at::Tensor(const at::Tensor&, c10::string_view, const OptTensor&,
                                                      c10::string_view, const OptTensor&)>();
    at::Tensor grad = grads[0];
    if (ctx->saved_data["may_clip"].toBool()) {
      const variable_list saved = ctx->get_saved_variables();
      const auto optional = [](const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; };
      const at::Tensor mask = mask_op.call(saved[0], ctx->saved_data["levels"].toStringRef(), optional(saved[1]),
                                           ctx->saved_data["granularity"].toStringRef(), optional(saved[2]));
      grad = grad * mask.to(grad.scalar_type());
    }
    return {grad, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  }
};

at::Tensor fake_quantize_autograd(const at::Tensor& x, int64_t bits, c10::string_view rounding,
                                  c10::string_view levels, const OptTensor& codebook, c10::string_view granularity,
                                  const OptTensor& scale, int64_t seed, int64_t offset, int64_t candidates) {
  return FakeQuantizeFunction::apply(x, bits, rounding, levels, codebook, granularity, scale, seed, offset,
                                     candidates);
}

// Identity forward; backward quantizes the gradient stochastically to `bits` on the uniform grid
// with a max-abs scale, an unbiased estimate of it (QSGD-style gradient compression).
at::Tensor quantize_grad(const at::Tensor& x, int64_t bits, c10::string_view granularity, int64_t, int64_t) {
  check_float_input(x, "quantize_grad");
  check_bits(bits, "quantize_grad");
  parse_granularity(granularity, "quantize_grad");
  return x.clone();
}

class QuantizeGradFunction : public torch::autograd::Function<QuantizeGradFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t bits, c10::string_view granularity,
                            int64_t seed, int64_t offset) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["bits"] = bits;
    ctx->saved_data["granularity"] = std::string(granularity);
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["offset"] = offset;
    return quantize_grad(x, bits, granularity, seed, offset);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto fq = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("zipml::fake_quantize", "")
                               .typed<at::Tensor(const at::Tensor&, int64_t, c10::string_view, c10::string_view,
                                                 const OptTensor&, c10::string_view, const OptTensor&, int64_t,
                                                 int64_t, int64_t)>();
    const std::string granularity = ctx->saved_data["granularity"].toStringRef();
    at::Tensor g = fq.call(grads[0], ctx->saved_data["bits"].toInt(), "stochastic", "uniform", std::nullopt,
                           granularity, std::nullopt, ctx->saved_data["seed"].toInt(),
                           ctx->saved_data["offset"].toInt(), 1024);
    return {g, {}, {}, {}, {}};
  }
};

at::Tensor quantize_grad_autograd(const at::Tensor& x, int64_t bits, c10::string_view granularity, int64_t seed,
                                  int64_t offset) {
  return QuantizeGradFunction::apply(x, bits, granularity, seed, offset);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize(const at::Tensor& x, int64_t bits, c10::string_view rounding,
                                                        c10::string_view levels, const OptTensor& codebook,
                                                        c10::string_view granularity, const OptTensor& scale,
                                                        int64_t seed, int64_t offset, int64_t candidates) {
  const int64_t mode = parse_rounding(rounding, "quantize");
  const Resolved r = resolve(x, bits, levels, codebook, granularity, scale, candidates, "quantize");
  at::Tensor codes = quantize_kernel().call(x, r.scale, r.table, r.num_levels, mode, seed, offset);
  return {codes, r.scale, r.levels()};
}

at::Tensor dequantize(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& levels,
                      at::ScalarType dtype) {
  check_codes_scale_levels(codes, scale, levels, "dequantize");
  check_float_input(at::empty({0}, dtype), "dequantize", "dtype");
  return dequantize_kernel().call(codes, std::nullopt, 0, scale.contiguous(), levels.contiguous(), dtype);
}

// d out / d scale = L[code] per element, summed over the group; d out / d levels[k] = scale summed
// over the elements with code k. Codes are integers and get no gradient.
class DequantizeFunction : public torch::autograd::Function<DequantizeFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& codes, const at::Tensor& scale,
                            const at::Tensor& levels, at::ScalarType dtype) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("zipml::dequantize", "")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                 at::ScalarType)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({codes, scale, levels});
    return op.call(codes, scale, levels, dtype);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& codes = saved[0];
    const at::Tensor& scale = saved[1];
    const at::Tensor& levels = saved[2];
    const at::Tensor grad = to_float(grads[0]);
    const at::Tensor index = codes.to(at::kLong);
    at::Tensor grad_scale, grad_levels;
    if (ctx->needs_input_grad(1)) grad_scale = at::sum_to(grad * levels.index({index}), scale.sym_sizes());
    if (ctx->needs_input_grad(2))
      grad_levels = at::zeros_like(levels).index_add_(0, index.reshape(-1), (grad * scale).reshape(-1));
    return {{}, grad_scale, grad_levels, {}};
  }
};

at::Tensor dequantize_autograd(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& levels,
                               at::ScalarType dtype) {
  return DequantizeFunction::apply(codes, scale, levels, dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> double_sample(
    const at::Tensor& x, int64_t bits, c10::string_view levels, const OptTensor& codebook,
    c10::string_view granularity, const OptTensor& scale, int64_t seed, int64_t offset, int64_t candidates) {
  const Resolved r = resolve(x, bits, levels, codebook, granularity, scale, candidates, "double_sample");
  auto [index, up] = double_sample_kernel().call(x, r.scale, r.table, r.num_levels, seed, offset);
  return {index, up, r.scale, r.levels()};
}

std::tuple<at::Tensor, at::Tensor> double_sample_decode(const at::Tensor& index, const at::Tensor& up,
                                                        const at::Tensor& scale, const at::Tensor& levels,
                                                        at::ScalarType dtype) {
  const char* op = "double_sample_decode";
  check_codes_scale_levels(index, scale, levels, op, "index");
  TORCH_CHECK_TYPE(up.scalar_type() == at::kByte, op, ": up must be uint8, got ", up.scalar_type());
  TORCH_CHECK_VALUE(up.sizes() == index.sizes() && up.device() == index.device(), op,
                    ": up must have the shape and device of index");
  check_float_input(at::empty({0}, dtype), op, "dtype");
  const at::Tensor s = scale.contiguous(), l = levels.contiguous();
  return {dequantize_kernel().call(index, up, 0, s, l, dtype), dequantize_kernel().call(index, up, 1, s, l, dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(zipml, CompositeExplicitAutograd, m) {
  m.impl("quantize", &quantize);
  m.impl("dequantize", &dequantize);
  m.impl("fake_quantize", &fake_quantize);
  m.impl("fake_quantize.out", &fake_quantize_out);
  m.impl("quantize_grad", &quantize_grad);
  m.impl("double_sample", &double_sample);
  m.impl("double_sample_decode", &double_sample_decode);
  m.impl("_ste_mask", &ste_mask);
}

TORCH_LIBRARY_IMPL(zipml, Autograd, m) {
  m.impl("fake_quantize", &fake_quantize_autograd);
  m.impl("quantize_grad", &quantize_grad_autograd);
  m.impl("dequantize", &dequantize_autograd);
}

}  // namespace zipml::detail
