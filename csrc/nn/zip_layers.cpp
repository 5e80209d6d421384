// ZipConv2d and ZipLinear: the C++ twins of torch_zipml/nn.py, computing the same bits (ZipML,
// arXiv 1611.05402, Section 7: FP32 master weights, quantized in every forward pass).
#include <torch/autograd.h>
#include <zipml/nn.h>

#include "describe.h"

namespace zipml {
namespace nn {
namespace {

const char* name(Levels l) { return l == Levels::Optimal ? "optimal" : l == Levels::Codebook ? "codebook" : "uniform"; }

void check_bits(const char* option, int64_t bits) {
  TORCH_CHECK_VALUE(bits >= 1 && bits <= 8, option, " must be an integer from 1 to 8, got ", bits);
}

}  // namespace

ZipOptions validated(ZipOptions o) {
  check_bits("weight_bits", o.weight_bits());
  if (o.grad_bits()) check_bits("grad_bits", *o.grad_bits());
  if (o.act_bits()) check_bits("act_bits", *o.act_bits());
  TORCH_CHECK_VALUE(o.granularity() != Granularity::Row,
                    "granularity must be Granularity::Tensor or Granularity::Channel, got Granularity::Row");
  TORCH_CHECK_VALUE(o.candidates() >= 2, "candidates must be an integer >= 2, got ", o.candidates());
  if (o.weight_levels() == Levels::Codebook) {
    TORCH_CHECK_VALUE(o.codebook().has_value() && o.codebook()->defined(),
                      "weight_levels Levels::Codebook needs the levels: pass them with codebook(tensor)");
    const at::Tensor& c = *o.codebook();
    const int64_t most = int64_t{1} << o.weight_bits();
    TORCH_CHECK_VALUE(c.dim() == 1 && c.numel() >= 1 && c.numel() <= most,
                      "codebook must be 1-D with 1 to 2**weight_bits = ", most, " levels, got shape ", c.sizes());
    o.codebook(c.detach().to(at::kFloat, /*non_blocking=*/false, /*copy=*/true));
  } else {
    TORCH_CHECK_VALUE(!o.codebook().has_value(),
                      "a codebook was given but weight_levels is Levels::", name(o.weight_levels()),
                      "; set weight_levels(Levels::Codebook) to use it");
  }
  return o;
}

std::ostream& operator<<(std::ostream& s, const ZipOptions& o) {
  s << "weight_bits=" << o.weight_bits() << ", weight_levels=";
  if (o.weight_levels() == Levels::Codebook) {
    s << "codebook(";
    const at::Tensor c = o.codebook()->cpu();
    for (int64_t i = 0; i < c.numel(); ++i) s << (i ? ", " : "") << c[i].item<float>();
    s << ")";
  } else {
    s << name(o.weight_levels());
  }
  s << ", rounding=" << (o.rounding() == Rounding::Nearest ? "nearest" : "stochastic")
    << ", granularity=" << (o.granularity() == Granularity::Channel ? "channel" : "tensor");
  if (o.grad_bits()) s << ", grad_bits=" << *o.grad_bits();
  if (o.act_bits()) s << ", act_bits=" << *o.act_bits();
  if (o.eval_rounding() == EvalRounding::Nearest) s << ", eval_rounding=nearest";
  return s;
}

// ---- ZipQuantized --------------------------------------------------------------------------------

ZipQuantized::ZipQuantized(ZipOptions quant) : quant_(validated(std::move(quant))) {
  // After the base layer's constructor: its initialisation draws first, then the seed (as in Python).
  seed = quant_.seed() ? *quant_.seed() : draw_seed();
}

std::pair<at::Tensor, at::Tensor> ZipQuantized::quantize_operands(const at::Tensor& x, const at::Tensor& weight,
                                                                  bool training) {
  uint64_t t = kEvalStep;
  Rounding rounding = quant_.rounding();
  if (training) {
    t = step++;
  } else if (quant_.eval_rounding() == EvalRounding::Nearest) {
    rounding = Rounding::Nearest;
  }
  const uint64_t base = kStreamsPerStep * t;
  at::Tensor input = x;
  if (quant_.act_bits()) {
    input = fake_quantize(x, QuantizeOptions(*quant_.act_bits())
                                 .rounding(rounding)
                                 .levels(Levels::Uniform)
                                 .granularity(Granularity::Tensor)
                                 .seed(seed)
                                 .offset(base + kStreamInput));
  }
  at::Tensor w = weight;
  if (quant_.grad_bits() && w.requires_grad() && at::GradMode::is_enabled()) {
    w = quantize_grad(w, *quant_.grad_bits(), quant_.granularity(), seed, base + kStreamGrad);
  }
  QuantizeOptions o(quant_.weight_bits());
  o.rounding(rounding)
      .levels(quant_.weight_levels())
      .granularity(quant_.granularity())
      .seed(seed)
      .offset(base + kStreamWeight)
      .candidates(quant_.candidates());
  if (quant_.codebook()) {
    if (quant_.codebook()->device() != weight.device()) quant_.codebook(quant_.codebook()->to(weight.device()));
    o.codebook(*quant_.codebook());  // follows the weight, wherever module.to() moved it
  }
  return {input, fake_quantize(w, o)};
}

// ---- ZipConv2d -----------------------------------------------------------------------------------

ZipConv2dImpl::ZipConv2dImpl(torch::nn::Conv2dOptions conv, ZipOptions quant)
    : LeafCloneable(std::move(conv)), ZipQuantized(std::move(quant)) {}

at::Tensor ZipConv2dImpl::forward(const at::Tensor& x) {
  auto [input, w] = quantize_operands(x, weight, is_training());
  return _conv_forward(input, w);
}

void ZipConv2dImpl::pretty_print(std::ostream& stream) const {
  stream << "zipml::nn::ZipConv2d(" << detail::base_arguments<torch::nn::Conv2dImpl>(*this) << ", " << quant_
         << ", seed=" << seed << ")";
}

// ---- ZipLinear -----------------------------------------------------------------------------------

ZipLinearImpl::ZipLinearImpl(torch::nn::LinearOptions linear, ZipOptions quant)
    : LeafCloneable(linear), ZipQuantized(std::move(quant)) {}

at::Tensor ZipLinearImpl::forward(const at::Tensor& x) {
  auto [input, w] = quantize_operands(x, weight, is_training());
  // at::linear, as Python's F.linear (torch::nn::functional::linear takes other paths for some shapes).
  return at::linear(input, w, bias);
}

void ZipLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "zipml::nn::ZipLinear(" << detail::base_arguments<torch::nn::LinearImpl>(*this) << ", " << quant_
         << ", seed=" << seed << ")";
}

}  // namespace nn
}  // namespace zipml
