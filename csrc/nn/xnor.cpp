// The XNOR-Net baselines (Rastegari et al., ECCV 2016): the C++ twins of torch_zipml/xnor.py, with
// the same arithmetic, so that the comparison with ZipML uses one model, one recipe and one trainer.
#include <torch/autograd.h>
#include <zipml/nn.h>

#include <sstream>

#include "describe.h"

namespace zipml {
namespace nn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// sign with the hard-tanh straight-through gradient.
struct Binarize : public torch::autograd::Function<Binarize> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& v, double clip) {
    ctx->save_for_backward({v});
    ctx->saved_data["clip"] = clip;
    const at::Tensor one = at::ones({}, v.options());
    return at::where(v > 0, one, -one);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor v = ctx->get_saved_variables()[0];
    const double clip = ctx->saved_data["clip"].toDouble();
    return {grads[0] * (v.abs() <= clip).to(grads[0].scalar_type()), at::Tensor()};
  }
};

double checked_clip(double clip) {
  TORCH_CHECK_VALUE(clip > 0, "clip must be a positive number, got ", clip);
  return clip;
}

template <class Base>
std::string described(const Base& module, const char* name, double clip) {
  std::ostringstream s;
  s << "zipml::nn::" << name << "(" << detail::base_arguments<Base>(module) << ", clip=" << clip << ")";
  return s.str();
}

}  // namespace

at::Tensor binarize(const at::Tensor& v, double clip) { return Binarize::apply(v, clip); }

at::Tensor binary_weight(const at::Tensor& w, double clip) {
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < w.dim(); ++d) dims.push_back(d);
  const at::Tensor alpha = w.abs().mean(dims, /*keepdim=*/true);
  return binarize(w, clip) * alpha;
}

// ---- BWN -----------------------------------------------------------------------------------------

BWNConv2dImpl::BWNConv2dImpl(torch::nn::Conv2dOptions conv, double clip)
    : LeafCloneable(std::move(conv)), clip(checked_clip(clip)) {}

at::Tensor BWNConv2dImpl::forward(const at::Tensor& x) { return _conv_forward(x, binary_weight(weight, clip)); }

void BWNConv2dImpl::pretty_print(std::ostream& stream) const {
  stream << described<torch::nn::Conv2dImpl>(*this, "BWNConv2d", clip);
}

BWNLinearImpl::BWNLinearImpl(torch::nn::LinearOptions linear, double clip)
    : LeafCloneable(linear), clip(checked_clip(clip)) {}

at::Tensor BWNLinearImpl::forward(const at::Tensor& x) { return at::linear(x, binary_weight(weight, clip), bias); }

void BWNLinearImpl::pretty_print(std::ostream& stream) const {
  stream << described<torch::nn::LinearImpl>(*this, "BWNLinear", clip);
}

// ---- XNOR ----------------------------------------------------------------------------------------

XNORConv2dImpl::XNORConv2dImpl(torch::nn::Conv2dOptions conv, double clip)
    : LeafCloneable(std::move(conv)), clip(checked_clip(clip)) {
  TORCH_CHECK_VALUE(options.groups() == 1, "XNORConv2d: groups must be 1 (K is a mean over all input channels), got ",
                    options.groups());
  TORCH_CHECK_VALUE(std::holds_alternative<torch::enumtype::kZeros>(options.padding_mode()),
                    "XNORConv2d: padding_mode must be zeros, got ",
                    torch::enumtype::get_enum_name(options.padding_mode()));
  TORCH_CHECK_VALUE(std::holds_alternative<torch::ExpandingArray<2>>(options.padding()),
                    "XNORConv2d: padding must be given as numbers, got ",
                    std::holds_alternative<torch::enumtype::kValid>(options.padding()) ? "kValid" : "kSame");
}

at::Tensor XNORConv2dImpl::forward(const at::Tensor& x) {
  const auto& kernel = *options.kernel_size();
  const auto padding = *std::get<torch::ExpandingArray<2>>(options.padding());
  const auto stride = *options.stride();
  const auto dilation = *options.dilation();
  const at::Tensor box =
      at::full({1, 1, kernel[0], kernel[1]}, 1.0 / static_cast<double>(kernel[0] * kernel[1]), x.options());
  const at::Tensor k = at::conv2d(x.abs().mean({1}, /*keepdim=*/true), box, {}, stride, padding, dilation);
  const at::Tensor y = at::conv2d(binarize(x, clip), binary_weight(weight, clip), {}, stride, padding, dilation) * k;
  return bias.defined() ? y + bias.view({1, -1, 1, 1}) : y;
}

void XNORConv2dImpl::pretty_print(std::ostream& stream) const {
  stream << described<torch::nn::Conv2dImpl>(*this, "XNORConv2d", clip);
}

XNORLinearImpl::XNORLinearImpl(torch::nn::LinearOptions linear, double clip)
    : LeafCloneable(linear), clip(checked_clip(clip)) {}

at::Tensor XNORLinearImpl::forward(const at::Tensor& x) {
  const at::Tensor k = x.abs().mean({-1}, /*keepdim=*/true);
  const at::Tensor y = at::linear(binarize(x, clip), binary_weight(weight, clip)) * k;
  return bias.defined() ? y + bias : y;
}

void XNORLinearImpl::pretty_print(std::ostream& stream) const {
  stream << described<torch::nn::LinearImpl>(*this, "XNORLinear", clip);
}

}  // namespace nn
}  // namespace zipml
