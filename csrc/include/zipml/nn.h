// torch-zipml for LibTorch: low-precision layers as torch::nn modules, the C++ twins of
// torch_zipml.nn (ZipConv2d, ZipLinear) and torch_zipml.xnor (the XNOR-Net baselines).
//
//   #include <zipml/nn.h>
//   zipml::nn::ZipConv2d conv(torch::nn::Conv2dOptions(3, 16, 3).padding(1).bias(false),
//                             zipml::nn::ZipOptions().weight_bits(2).weight_levels(zipml::Levels::Optimal).seed(7));
//   at::Tensor y = conv(x);  // conv2d with the quantized weight; backward: straight-through to conv->weight
//
// Every layer is a subclass of its PyTorch twin (torch::nn::Conv2dImpl or LinearImpl): same options,
// same initialisation, same parameters ("weight", "bias"), so checkpoints move freely between the plain,
// the quantized and the Python model. For the same weights, input, seed and step, a layer here computes
// the same bits as its Python twin (tests/python/test_cpp_parity.py).
//
// Method: ZipML (Zhang et al., ICML 2017, arXiv 1611.05402), Section 7; XNOR-Net (Rastegari et al.,
// ECCV 2016), Sections 3.1 and 3.2.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/ordered_dict.h>
#include <zipml/zipml.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace zipml {
namespace nn {

// ---- ZipConv2d / ZipLinear -----------------------------------------------------------------------

// What an eval-mode forward uses: a fixed stochastic draw of the weights (stream kEvalStep), or
// nearest rounding.
enum class EvalRounding { Sample, Nearest };

// The Philox streams of one forward pass. In training, forward number t (the layer's `step`) uses
// offset kStreamsPerStep * t + stream; in eval mode, t = kEvalStep and the step is left alone.
constexpr uint64_t kEvalStep = (uint64_t{1} << 61) - 1;  // offsets 4 * kEvalStep + k < 2^63
constexpr uint64_t kStreamsPerStep = 4;
constexpr uint64_t kStreamWeight = 0, kStreamGrad = 1, kStreamInput = 2;  // 3 is reserved

// The quantization of a ZipConv2d / ZipLinear (the keyword arguments of the Python layers).
struct ZipOptions {
  // 1 to 8 bits per weight (2^weight_bits levels).
  TORCH_ARG(int64_t, weight_bits) = 2;
  // Uniform (evenly spaced on [-1, 1] in units of the scale), Optimal (variance-optimal for the current
  // weights, Section 5, recomputed every forward) or Codebook (the sorted levels given with codebook()).
  TORCH_ARG(Levels, weight_levels) = Levels::Uniform;
  TORCH_ARG(std::optional<at::Tensor>, codebook) = std::nullopt;
  // Stochastic (unbiased, Section 2) or Nearest.
  TORCH_ARG(Rounding, rounding) = Rounding::Stochastic;
  // Tensor (one scale max|W|) or Channel (one per output channel).
  TORCH_ARG(Granularity, granularity) = Granularity::Tensor;
  // Quantize the weight gradient stochastically to so many bits (QSGD-style, unbiased).
  TORCH_ARG(std::optional<int64_t>, grad_bits) = std::nullopt;
  // Fake-quantize the layer input (uniform levels, one scale max|x|).
  TORCH_ARG(std::optional<int64_t>, act_bits) = std::nullopt;
  // The layer's Philox key; none: drawn from the default generator when the layer is built.
  TORCH_ARG(std::optional<uint64_t>, seed) = std::nullopt;
  TORCH_ARG(EvalRounding, eval_rounding) = EvalRounding::Sample;
  // Candidate points of the optimal-levels dynamic program.
  TORCH_ARG(int64_t, candidates) = 1024;
};

// Checks the options (errors name the option and the accepted values); returns them with the codebook
// as a float32 copy.
ZipOptions validated(ZipOptions options);
std::ostream& operator<<(std::ostream& stream, const ZipOptions& options);

// The quantization state and arithmetic that ZipConv2d and ZipLinear share. `seed` and `step` are
// public, like the Python layers' attributes; they are not parameters or buffers, so the modules'
// parameters stay those of Conv2d / Linear (save and restore them with rng_state / set_rng_state).
class ZipQuantized {
 public:
  virtual ~ZipQuantized() = default;

  // (input, weight) as one forward pass uses them; advances `step` when training:
  //   x = fake_quantize(x, act_bits, uniform, per tensor, offset 4t + 2)        if act_bits
  //   w = quantize_grad(weight, grad_bits, granularity, offset 4t + 1)          if grad_bits and autograd records w
  //   w = fake_quantize(w, weight_bits, weight_levels, granularity, offset 4t + 0)
  // with rounding `rounding`, or Nearest in eval mode with EvalRounding::Nearest.
  std::pair<at::Tensor, at::Tensor> quantize_operands(const at::Tensor& x, const at::Tensor& weight, bool training);

  const ZipOptions& quant() const { return quant_; }
  // Python's `layer.eval_rounding = ...` (the trainer evaluates the final model both ways).
  void set_eval_rounding(EvalRounding r) { quant_.eval_rounding(r); }
  uint64_t seed = 0;
  uint64_t step = 0;

 protected:
  explicit ZipQuantized(ZipOptions quant);
  ZipOptions quant_;
};

namespace detail {
// Cloneable<Conv2dImpl>::clone would copy only the Conv2dImpl part of a subclass: this clone copies
// the whole layer (a leaf: parameters, no buffers or submodules).
template <class Derived, class Base>
class LeafCloneable : public Base {
 public:
  using Base::Base;
  std::shared_ptr<torch::nn::Module> clone(const std::optional<torch::Device>& device = std::nullopt) const override {
    torch::NoGradGuard no_grad;
    auto copy = std::make_shared<Derived>(static_cast<const Derived&>(*this));
    copy->parameters_.clear();
    copy->reset();  // fresh parameter tensors, as Cloneable does
    for (const auto& p : this->named_parameters(/*recurse=*/false)) {
      const at::Tensor& t = p.value();
      copy->parameters_[p.key()].set_data(device && t.device() != *device ? t.to(*device) : t.clone());
    }
    return copy;
  }
};
}  // namespace detail

// torch::nn::Conv2d whose forward pass uses the ZipML-quantized weight (Section 7): FP32 master
// weight, quantized on the fly by zipml::fake_quantize, straight-through backward. Bias stays FP32.
class ZipConv2dImpl : public detail::LeafCloneable<ZipConv2dImpl, torch::nn::Conv2dImpl>, public ZipQuantized {
 public:
  explicit ZipConv2dImpl(torch::nn::Conv2dOptions conv, ZipOptions quant = {});
  at::Tensor forward(const at::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
};
TORCH_MODULE(ZipConv2d);

// torch::nn::Linear whose forward pass uses the ZipML-quantized weight (Channel: one scale per output
// feature).
class ZipLinearImpl : public detail::LeafCloneable<ZipLinearImpl, torch::nn::LinearImpl>, public ZipQuantized {
 public:
  explicit ZipLinearImpl(torch::nn::LinearOptions linear, ZipOptions quant = {});
  at::Tensor forward(const at::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
};
TORCH_MODULE(ZipLinear);

// ---- XNOR-Net baselines --------------------------------------------------------------------------

// +1 where v > 0, -1 elsewhere (an exact 0 maps to -1); backward: the straight-through estimator with
// clipping, dL/dv = dL/db * 1[|v| <= clip].
at::Tensor binarize(const at::Tensor& v, double clip = 1.0);
// binarize(w) * alpha, alpha = mean |w| per output channel (dim 0), differentiated through alpha.
at::Tensor binary_weight(const at::Tensor& w, double clip = 1.0);

// Conv2d with binary weights sign(W) * mean|W| per output channel (XNOR-Net's BWN, Section 3.1).
class BWNConv2dImpl : public detail::LeafCloneable<BWNConv2dImpl, torch::nn::Conv2dImpl> {
 public:
  explicit BWNConv2dImpl(torch::nn::Conv2dOptions conv, double clip = 1.0);
  at::Tensor forward(const at::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
  double clip;
};
TORCH_MODULE(BWNConv2d);

class BWNLinearImpl : public detail::LeafCloneable<BWNLinearImpl, torch::nn::LinearImpl> {
 public:
  explicit BWNLinearImpl(torch::nn::LinearOptions linear, double clip = 1.0);
  at::Tensor forward(const at::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
  double clip;
};
TORCH_MODULE(BWNLinear);

// Binary weights and binary inputs (XNOR-Net, Section 3.2):
//   K = conv2d(mean_c |x|, 1/(kh*kw) box, stride, padding, dilation)        (N, 1, H', W')
//   y = conv2d(binarize(x), binary_weight(W), stride, padding, dilation) * K + bias
// groups must be 1, padding numeric, padding_mode zeros.
class XNORConv2dImpl : public detail::LeafCloneable<XNORConv2dImpl, torch::nn::Conv2dImpl> {
 public:
  explicit XNORConv2dImpl(torch::nn::Conv2dOptions conv, double clip = 1.0);
  at::Tensor forward(const at::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
  double clip;
};
TORCH_MODULE(XNORConv2d);

// y = linear(binarize(x), binary_weight(W)) * mean|x| (per sample) + bias.
class XNORLinearImpl : public detail::LeafCloneable<XNORLinearImpl, torch::nn::LinearImpl> {
 public:
  explicit XNORLinearImpl(torch::nn::LinearOptions linear, double clip = 1.0);
  at::Tensor forward(const at::Tensor& x);
  void pretty_print(std::ostream& stream) const override;
  double clip;
};
TORCH_MODULE(XNORLinear);

// ---- Which layer becomes what: the C++ form of torch_zipml.QuantConfig ------------------------------

enum class Scheme { FP32, BWN, XNOR, ZipML };
const char* scheme_name(Scheme scheme);  // "fp32", "bwn", "xnor", "zipml"
Scheme parse_scheme(const std::string& name);

// A model's quantization. Layers are numbered i = 0, 1, ... in registration order; with
// skip_first_last the first and the last stay FP32 (the XNOR-Net convention); then each override
// whose pattern (fnmatch, e.g. "layer1.*") matches the layer's name changes its config, in order.
// ZipML layer i gets the Philox seed zipml.seed() + i (mod 2^64); with no seed, one base seed is drawn
// from the default generator after the model's weights are initialised.
struct QuantConfig {
  struct Override {
    std::string pattern;
    std::function<void(QuantConfig&)> change;
  };
  Scheme scheme = Scheme::ZipML;
  ZipOptions zipml;   // the ZipConv2d / ZipLinear options (scheme ZipML)
  double clip = 1.0;  // the straight-through clipping of BWN and XNOR
  bool skip_first_last = true;
  std::vector<Override> overrides;

  static QuantConfig fp32() {
    QuantConfig c;
    c.scheme = Scheme::FP32;
    return c;
  }
  // The config of layer `index` of `count`, named `name` (overrides applied; no overrides left).
  QuantConfig resolve(const std::string& name, int64_t index, int64_t count) const;
};

// Builds a model's Conv2d / Linear layers as its QuantConfig says, numbering them in call order (which
// must be the model's registration order). Models call conv2d() / linear() for every layer, then
// finish() once the weights are initialised.
class LayerFactory {
 public:
  LayerFactory(QuantConfig config, int64_t num_layers);
  torch::nn::AnyModule conv2d(const std::string& name, const torch::nn::Conv2dOptions& options);
  torch::nn::AnyModule linear(const std::string& name, const torch::nn::LinearOptions& options);
  void finish();

 private:
  QuantConfig resolve_next(const std::string& name);
  void adopt(const QuantConfig& layer, ZipQuantized* zip);  // numbers the layer, seeds it if it is ZipML
  QuantConfig config_;
  int64_t count_;
  int64_t next_ = 0;
  std::vector<std::pair<int64_t, ZipQuantized*>> unseeded_;  // seeded in finish()
};

// ---- Model-wide helpers --------------------------------------------------------------------------

// {name: scheme} of a model's Conv2d / Linear layers (plain or quantized), in registration order.
std::vector<std::pair<std::string, Scheme>> layer_schemes(const torch::nn::Module& model);

// {name: (seed, step)} of every ZipConv2d / ZipLinear: what, besides the state dict, a checkpoint
// needs to continue the exact Philox streams.
struct LayerRng {
  uint64_t seed = 0;
  uint64_t step = 0;
};
torch::OrderedDict<std::string, LayerRng> rng_state(const torch::nn::Module& model);
void set_rng_state(torch::nn::Module& model, const torch::OrderedDict<std::string, LayerRng>& state);

// Batch-norm statistics for the network eval mode runs ("precise BN"): batch-norm running statistics
// gathered in training average over many weight draws and fit no single eval network (a fixed draw or
// nearest rounding). This re-estimates them in place: `forward` runs every input of `batches` through
// the model with its quantized layers in eval mode and its batch norms in training mode, averaging the
// batch statistics with equal weights (momentum none); the model is left in eval mode. The destructor
// (or restore()) puts the statistics and momenta it replaced back. Python's calibrate_batchnorm does
// the same on a copy of the model.
class CalibratedBatchNorm {
 public:
  CalibratedBatchNorm(torch::nn::Module& model, const std::function<void(const at::Tensor&)>& forward,
                      const std::vector<at::Tensor>& batches);
  ~CalibratedBatchNorm() { restore(); }
  CalibratedBatchNorm(const CalibratedBatchNorm&) = delete;
  CalibratedBatchNorm& operator=(const CalibratedBatchNorm&) = delete;
  void restore();

 private:
  std::vector<std::function<void()>> restore_;  // one per batch norm
};

// The model's parameters and buffers in the order and with the names of Python's Module.state_dict()
// (each module's own parameters, then its buffers, modules in registration order).
torch::OrderedDict<std::string, at::Tensor> state_dict(const torch::nn::Module& model);
// Copies a state dict (e.g. one Python saved with torch.save(model.state_dict()) and read with
// torch::pickle_load) into the model; strict: the keys must match exactly. Errors name the keys.
void load_state_dict(torch::nn::Module& model, const torch::OrderedDict<std::string, at::Tensor>& state,
                     bool strict = true);

}  // namespace nn
}  // namespace zipml
