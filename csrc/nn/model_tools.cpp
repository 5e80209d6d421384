// Building a model's layers from a QuantConfig (the C++ form of torch_zipml.convert), and the
// model-wide helpers: layer schemes, Philox state, Python-ordered state dicts.
#include <fnmatch.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/batchnorm.h>
#include <zipml/nn.h>

#include <algorithm>
#include <set>
#include <sstream>

namespace zipml {
namespace nn {

const char* scheme_name(Scheme scheme) {
  switch (scheme) {
    case Scheme::FP32: return "fp32";
    case Scheme::BWN: return "bwn";
    case Scheme::XNOR: return "xnor";
    case Scheme::ZipML: return "zipml";
  }
  return "?";
}

Scheme parse_scheme(const std::string& name) {
  for (Scheme s : {Scheme::FP32, Scheme::BWN, Scheme::XNOR, Scheme::ZipML})
    if (name == scheme_name(s)) return s;
  TORCH_CHECK_VALUE(false, "scheme must be one of 'fp32', 'bwn', 'xnor', 'zipml', got '", name, "'");
}

QuantConfig QuantConfig::resolve(const std::string& name, int64_t index, int64_t count) const {
  QuantConfig layer = *this;
  layer.overrides.clear();
  if (skip_first_last && (index == 0 || index == count - 1)) layer.scheme = Scheme::FP32;
  for (const Override& o : overrides)
    if (fnmatch(o.pattern.c_str(), name.c_str(), 0) == 0) o.change(layer);  // fnmatchcase: '*' also matches '.'
  layer.overrides.clear();  // in case a change added some: a layer's config has none
  return layer;
}

// ---- LayerFactory --------------------------------------------------------------------------------

LayerFactory::LayerFactory(QuantConfig config, int64_t num_layers) : config_(std::move(config)), count_(num_layers) {}

QuantConfig LayerFactory::resolve_next(const std::string& name) {
  TORCH_CHECK(next_ < count_, "LayerFactory: layer '", name, "' is number ", next_ + 1, " of a model declared with ",
              count_, " layers");
  return config_.resolve(name, next_, count_);
}

void LayerFactory::adopt(const QuantConfig& layer, ZipQuantized* zip) {
  if (zip != nullptr) {
    if (layer.zipml.seed())
      zip->seed = *layer.zipml.seed() + static_cast<uint64_t>(next_);  // mod 2^64
    else
      unseeded_.emplace_back(next_, zip);
  }
  ++next_;
}

namespace {

// The layer the resolved config names. A ZipML layer is built with seed 0 and given its real seed by
// the factory (adopt), so that construction never draws one from the global generator.
template <class Plain, class Bwn, class Xnor, class Zip, class Options>
std::pair<torch::nn::AnyModule, ZipQuantized*> make_layer(const std::string& name, const Options& options,
                                                          const QuantConfig& layer) {
  try {
    switch (layer.scheme) {
      case Scheme::FP32: return {torch::nn::AnyModule(Plain(options)), nullptr};
      case Scheme::BWN: return {torch::nn::AnyModule(Bwn(options, layer.clip)), nullptr};
      case Scheme::XNOR: return {torch::nn::AnyModule(Xnor(options, layer.clip)), nullptr};
      case Scheme::ZipML: {
        Zip zip(options, ZipOptions(layer.zipml).seed(0));
        return {torch::nn::AnyModule(zip), zip.get()};
      }
    }
  } catch (const c10::ValueError& e) {
    TORCH_CHECK_VALUE(false, "layer '", name, "' cannot take scheme '", scheme_name(layer.scheme),
                      "': ", e.what_without_backtrace(), " (keep it in another scheme with an override)");
  }
  TORCH_CHECK(false, "unknown scheme");
}

}  // namespace

torch::nn::AnyModule LayerFactory::conv2d(const std::string& name, const torch::nn::Conv2dOptions& options) {
  const QuantConfig layer = resolve_next(name);
  auto [module, zip] = make_layer<torch::nn::Conv2d, BWNConv2d, XNORConv2d, ZipConv2d>(name, options, layer);
  adopt(layer, zip);
  return module;
}

torch::nn::AnyModule LayerFactory::linear(const std::string& name, const torch::nn::LinearOptions& options) {
  const QuantConfig layer = resolve_next(name);
  auto [module, zip] = make_layer<torch::nn::Linear, BWNLinear, XNORLinear, ZipLinear>(name, options, layer);
  adopt(layer, zip);
  return module;
}

void LayerFactory::finish() {
  TORCH_CHECK(next_ == count_, "LayerFactory: the model declared ", count_, " layers but built ", next_);
  if (unseeded_.empty()) return;
  const uint64_t base = draw_seed();
  for (auto& [index, zip] : unseeded_) zip->seed = base + static_cast<uint64_t>(index);
  unseeded_.clear();
}

// ---- model-wide helpers --------------------------------------------------------------------------

namespace {

// The scheme of a Conv2d / Linear layer, plain or quantized; none for other modules.
std::optional<Scheme> scheme_of(const torch::nn::Module& m) {
  if (dynamic_cast<const ZipQuantized*>(&m)) return Scheme::ZipML;
  if (dynamic_cast<const BWNConv2dImpl*>(&m) || dynamic_cast<const BWNLinearImpl*>(&m)) return Scheme::BWN;
  if (dynamic_cast<const XNORConv2dImpl*>(&m) || dynamic_cast<const XNORLinearImpl*>(&m)) return Scheme::XNOR;
  if (dynamic_cast<const torch::nn::Conv2dImpl*>(&m) || dynamic_cast<const torch::nn::LinearImpl*>(&m))
    return Scheme::FP32;
  return std::nullopt;
}

std::string joined(const std::vector<std::string>& names) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < names.size(); ++i) s << (i ? ", " : "") << "'" << names[i] << "'";
  s << "]";
  return s.str();
}

}  // namespace

std::vector<std::pair<std::string, Scheme>> layer_schemes(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, Scheme>> out;
  for (const auto& item : model.named_modules(/*name_prefix=*/"", /*include_self=*/true))
    if (auto s = scheme_of(*item.value())) out.emplace_back(item.key(), *s);
  return out;
}

torch::OrderedDict<std::string, LayerRng> rng_state(const torch::nn::Module& model) {
  torch::OrderedDict<std::string, LayerRng> state;
  for (const auto& item : model.named_modules("", true))
    if (auto* zip = dynamic_cast<const ZipQuantized*>(item.value().get()))
      state.insert(item.key(), {zip->seed, zip->step});
  return state;
}

void set_rng_state(torch::nn::Module& model, const torch::OrderedDict<std::string, LayerRng>& state) {
  std::vector<std::pair<std::string, ZipQuantized*>> layers;
  std::vector<std::string> missing, unexpected;
  std::set<std::string> names;
  for (const auto& item : model.named_modules("", true))
    if (auto* zip = dynamic_cast<ZipQuantized*>(item.value().get())) {
      layers.emplace_back(item.key(), zip);
      names.insert(item.key());
      if (!state.contains(item.key())) missing.push_back(item.key());
    }
  for (const auto& item : state)
    if (!names.count(item.key())) unexpected.push_back(item.key());
  TORCH_CHECK_VALUE(missing.empty() && unexpected.empty(),
                    "set_rng_state: the state does not match the model's quantized layers (missing: ", joined(missing),
                    ", unexpected: ", joined(unexpected), ")");
  for (auto& [name, zip] : layers) {
    zip->seed = state[name].seed;
    zip->step = state[name].step;
  }
}

// ---- batch-norm calibration ----------------------------------------------------------------------

namespace {

// Saves the statistics and momentum of m (if it is a Norm tracking statistics) and resets them.
template <class Norm>
bool calibrate_norm(torch::nn::Module& m, std::vector<std::function<void()>>& restore,
                    std::vector<torch::nn::Module*>& norms) {
  auto* bn = dynamic_cast<Norm*>(&m);
  if (bn == nullptr || !bn->options.track_running_stats()) return bn != nullptr;
  const at::Tensor mean = bn->running_mean.clone(), var = bn->running_var.clone(),
                   count = bn->num_batches_tracked.clone();
  const std::optional<double> momentum = bn->options.momentum();
  restore.push_back([bn, mean, var, count, momentum] {
    torch::NoGradGuard no_grad;
    bn->running_mean.copy_(mean);
    bn->running_var.copy_(var);
    bn->num_batches_tracked.copy_(count);
    bn->options.momentum(momentum);
  });
  bn->reset_running_stats();
  bn->options.momentum(std::nullopt);  // a cumulative average: every batch weighs the same
  norms.push_back(bn);
  return true;
}

}  // namespace

CalibratedBatchNorm::CalibratedBatchNorm(torch::nn::Module& model,
                                         const std::function<void(const at::Tensor&)>& forward,
                                         const std::vector<at::Tensor>& batches) {
  torch::NoGradGuard no_grad;
  std::vector<torch::nn::Module*> norms;
  for (const auto& m : model.modules(/*include_self=*/true)) {
    (void)(calibrate_norm<torch::nn::BatchNorm1dImpl>(*m, restore_, norms) ||
           calibrate_norm<torch::nn::BatchNorm2dImpl>(*m, restore_, norms) ||
           calibrate_norm<torch::nn::BatchNorm3dImpl>(*m, restore_, norms));
  }
  try {
    TORCH_CHECK_VALUE(norms.empty() || !batches.empty(), "CalibratedBatchNorm: no batches given");
    model.eval();
    for (auto* m : norms) m->train();
    for (const at::Tensor& x : batches) forward(x);
    model.eval();  // the momenta stay none (unused in eval mode) until restore()
  } catch (...) {
    restore();
    throw;
  }
}

void CalibratedBatchNorm::restore() {
  for (auto& r : restore_) r();
  restore_.clear();
}

torch::OrderedDict<std::string, at::Tensor> state_dict(const torch::nn::Module& model) {
  torch::OrderedDict<std::string, at::Tensor> state;
  for (const auto& item : model.named_modules("", true)) {
    const std::string prefix = item.key().empty() ? "" : item.key() + ".";
    for (const auto& p : item.value()->named_parameters(/*recurse=*/false)) state.insert(prefix + p.key(), p.value());
    for (const auto& b : item.value()->named_buffers(/*recurse=*/false))
      if (b.value().defined()) state.insert(prefix + b.key(), b.value());
  }
  return state;
}

void load_state_dict(torch::nn::Module& model, const torch::OrderedDict<std::string, at::Tensor>& state, bool strict) {
  const auto own = state_dict(model);
  std::vector<std::string> missing, unexpected;
  for (const auto& item : own)
    if (!state.contains(item.key())) missing.push_back(item.key());
  for (const auto& item : state)
    if (!own.contains(item.key())) unexpected.push_back(item.key());
  TORCH_CHECK_VALUE(!strict || (missing.empty() && unexpected.empty()),
                    "load_state_dict: the keys differ from the model's (missing: ", joined(missing),
                    ", unexpected: ", joined(unexpected), ")");
  torch::NoGradGuard no_grad;
  for (const auto& item : own) {
    if (!state.contains(item.key())) continue;
    const at::Tensor& source = state[item.key()];
    at::Tensor target = item.value();
    TORCH_CHECK_VALUE(source.sizes() == target.sizes(), "load_state_dict: '", item.key(), "' has shape ",
                      source.sizes(), " in the state dict but ", target.sizes(), " in the model");
    target.copy_(source);
  }
}

}  // namespace nn
}  // namespace zipml
