// The C++ side of tests/python/test_cpp_parity.py: reads cases that Python wrote with torch.save
// (layer options, weights, Philox seed and step, input, output gradient), runs them through the C++
// layers and ResNet of <zipml/nn.h> and <zipml/models.h>, and writes what they computed (output,
// gradients, states) with torch::pickle_save for Python to compare bit for bit. It runs as its own
// process: libzipml.so and torch_zipml._C register the same operators and cannot share one.
//
//   zipml_nn_parity cases.pt results.pt
#include <ATen/Parallel.h>
#include <torch/serialize.h>
#include <zipml/models.h>
#include <zipml/nn.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace {

using c10::IValue;
using GenericDict = c10::impl::GenericDict;
namespace znn = zipml::nn;

GenericDict new_dict() { return GenericDict(c10::StringType::get(), c10::AnyType::get()); }

bool has(const GenericDict& d, const char* key) { return d.contains(key) && !d.at(key).isNone(); }

std::vector<int64_t> ints(const IValue& v) {
  if (v.isInt()) return {v.toInt()};
  std::vector<int64_t> out;
  if (v.isTuple()) {
    for (const auto& x : v.toTupleRef().elements()) out.push_back(x.toInt());
  } else {
    for (const auto& x : v.toList()) out.push_back(x.get().toInt());
  }
  return out;
}

// The keyword arguments of ZipConv2d / ZipLinear (or of QuantConfig) as ZipOptions.
znn::ZipOptions zip_options(const GenericDict& q) {
  znn::ZipOptions o;
  if (has(q, "weight_bits")) o.weight_bits(q.at("weight_bits").toInt());
  if (has(q, "weight_levels")) {
    const IValue levels = q.at("weight_levels");
    if (levels.isTensor()) {
      o.weight_levels(zipml::Levels::Codebook).codebook(levels.toTensor());
    } else {
      o.weight_levels(levels.toStringRef() == "optimal" ? zipml::Levels::Optimal : zipml::Levels::Uniform);
    }
  }
  if (has(q, "rounding"))
    o.rounding(q.at("rounding").toStringRef() == "nearest" ? zipml::Rounding::Nearest : zipml::Rounding::Stochastic);
  if (has(q, "granularity"))
    o.granularity(q.at("granularity").toStringRef() == "channel" ? zipml::Granularity::Channel
                                                                 : zipml::Granularity::Tensor);
  if (has(q, "grad_bits")) o.grad_bits(q.at("grad_bits").toInt());
  if (has(q, "act_bits")) o.act_bits(q.at("act_bits").toInt());
  if (has(q, "seed")) o.seed(static_cast<uint64_t>(q.at("seed").toInt()));  // int64 bits of a uint64
  if (has(q, "eval_rounding"))
    o.eval_rounding(q.at("eval_rounding").toStringRef() == "nearest" ? znn::EvalRounding::Nearest
                                                                     : znn::EvalRounding::Sample);
  if (has(q, "candidates")) o.candidates(q.at("candidates").toInt());
  return o;
}

torch::nn::Conv2dOptions conv_options(const GenericDict& c) {
  const auto k = ints(c.at("kernel_size"));
  torch::nn::Conv2dOptions o(c.at("in_channels").toInt(), c.at("out_channels").toInt(), {k[0], k.back()});
  if (has(c, "stride")) {
    const auto s = ints(c.at("stride"));
    o.stride({s[0], s.back()});
  }
  if (has(c, "padding")) {
    const IValue p = c.at("padding");
    if (p.isString()) {
      if (p.toStringRef() == "same")
        o.padding(torch::kSame);
      else
        o.padding(torch::kValid);
    } else {
      const auto v = ints(p);
      o.padding(torch::ExpandingArray<2>({v[0], v.back()}));
    }
  }
  if (has(c, "dilation")) {
    const auto d = ints(c.at("dilation"));
    o.dilation({d[0], d.back()});
  }
  if (has(c, "groups")) o.groups(c.at("groups").toInt());
  if (has(c, "bias")) o.bias(c.at("bias").toBool());
  if (has(c, "padding_mode")) {
    const std::string m = c.at("padding_mode").toStringRef();
    if (m == "reflect")
      o.padding_mode(torch::kReflect);
    else if (m == "replicate")
      o.padding_mode(torch::kReplicate);
    else if (m == "circular")
      o.padding_mode(torch::kCircular);
  }
  return o;
}

torch::OrderedDict<std::string, at::Tensor> tensors(const IValue& v) {
  torch::OrderedDict<std::string, at::Tensor> out;
  for (const auto& item : v.toGenericDict()) out.insert(item.key().toStringRef(), item.value().toTensor());
  return out;
}

GenericDict tensor_dict(const torch::OrderedDict<std::string, at::Tensor>& d) {
  GenericDict out(c10::StringType::get(), c10::TensorType::get());
  for (const auto& item : d) out.insert(item.key(), item.value().detach().clone());
  return out;
}

// Runs forward (and backward if a grad_output is given) of `forward` on the case's input; fills
// output, grad_input and the parameters' gradients.
void run_forward(torch::nn::Module& module, const std::function<at::Tensor(const at::Tensor&)>& forward,
                 const GenericDict& c, GenericDict& result) {
  module.train(c.at("train").toBool());
  at::Tensor x = c.at("input").toTensor().clone();
  const bool backward = has(c, "grad_output");
  x.set_requires_grad(backward);
  const at::Tensor y = forward(x);
  result.insert("output", y.detach());
  if (!backward) return;
  y.backward(c.at("grad_output").toTensor());
  result.insert("grad_input", x.grad());
  GenericDict grads(c10::StringType::get(), c10::TensorType::get());
  for (const auto& p : module.named_parameters())
    if (p.value().grad().defined()) grads.insert(p.key(), p.value().grad());
  result.insert("grads", grads);
}

template <class Holder>
GenericDict run_layer(Holder layer, const GenericDict& c) {
  GenericDict result = new_dict();
  znn::load_state_dict(*layer, tensors(c.at("state")));
  if constexpr (std::is_base_of_v<znn::ZipQuantized, typename Holder::ContainedType>) {
    if (has(c, "step")) layer->step = static_cast<uint64_t>(c.at("step").toInt());
  }
  run_forward(
      *layer, [&](const at::Tensor& x) { return layer->forward(x); }, c, result);
  if constexpr (std::is_base_of_v<znn::ZipQuantized, typename Holder::ContainedType>) {
    result.insert("step", static_cast<int64_t>(layer->step));
  }
  return result;
}

GenericDict run_case(const GenericDict& c) {
  const std::string kind = c.at("kind").toStringRef();
  const std::string scheme = has(c, "scheme") ? c.at("scheme").toStringRef() : "zipml";
  const double clip = has(c, "clip") ? c.at("clip").toDouble() : 1.0;
  if (kind == "conv2d") {
    const auto o = conv_options(c.at("conv").toGenericDict());
    if (scheme == "bwn") return run_layer(znn::BWNConv2d(o, clip), c);
    if (scheme == "xnor") return run_layer(znn::XNORConv2d(o, clip), c);
    return run_layer(znn::ZipConv2d(o, zip_options(c.at("quant").toGenericDict())), c);
  }
  if (kind == "linear") {
    const auto l = c.at("linear").toGenericDict();
    const auto o =
        torch::nn::LinearOptions(l.at("in_features").toInt(), l.at("out_features").toInt()).bias(l.at("bias").toBool());
    if (scheme == "bwn") return run_layer(znn::BWNLinear(o, clip), c);
    if (scheme == "xnor") return run_layer(znn::XNORLinear(o, clip), c);
    return run_layer(znn::ZipLinear(o, zip_options(c.at("quant").toGenericDict())), c);
  }
  TORCH_CHECK(kind == "resnet", "unknown case kind '", kind, "'");
  const GenericDict cfg = c.at("config").toGenericDict();
  znn::QuantConfig config;
  config.scheme = znn::parse_scheme(cfg.at("scheme").toStringRef());
  config.zipml = zip_options(cfg);
  if (has(cfg, "clip")) config.clip = cfg.at("clip").toDouble();
  if (has(cfg, "skip_first_last")) config.skip_first_last = cfg.at("skip_first_last").toBool();
  if (has(c, "init_seed")) torch::manual_seed(static_cast<uint64_t>(c.at("init_seed").toInt()));
  zipml::models::ResNetCifar model(c.at("depth").toInt(), c.at("num_classes").toInt(), c.at("in_channels").toInt(),
                                   config);
  GenericDict result = new_dict();
  result.insert("init_state", tensor_dict(znn::state_dict(*model)));
  if (has(c, "state")) znn::load_state_dict(*model, tensors(c.at("state")));
  if (has(c, "rng")) {
    torch::OrderedDict<std::string, znn::LayerRng> rng;
    for (const auto& item : c.at("rng").toGenericDict()) {
      const auto layer = item.value().toGenericDict();
      rng.insert(item.key().toStringRef(),
                 {static_cast<uint64_t>(layer.at("seed").toInt()), static_cast<uint64_t>(layer.at("step").toInt())});
    }
    znn::set_rng_state(*model, rng);
  }
  GenericDict schemes = new_dict();
  for (const auto& [name, s] : znn::layer_schemes(*model)) schemes.insert(name, std::string(znn::scheme_name(s)));
  result.insert("layers", schemes);
  run_forward(
      *model, [&](const at::Tensor& x) { return model->forward(x); }, c, result);
  result.insert("state", tensor_dict(znn::state_dict(*model)));
  GenericDict rng = new_dict();
  for (const auto& item : znn::rng_state(*model)) {
    GenericDict layer = new_dict();
    layer.insert("seed", static_cast<int64_t>(item.value().seed));
    layer.insert("step", static_cast<int64_t>(item.value().step));
    rng.insert(item.key(), layer);
  }
  result.insert("rng", rng);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: zipml_nn_parity cases.pt results.pt\n";
    return 2;
  }
  try {
    std::ifstream in(argv[1], std::ios::binary);
    TORCH_CHECK(in, "cannot read ", argv[1]);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const GenericDict input = torch::pickle_load(bytes).toGenericDict();
    at::set_num_threads(static_cast<int>(input.at("threads").toInt()));
    c10::impl::GenericList results(c10::AnyType::get());
    for (const auto& c : input.at("cases").toList()) results.push_back(run_case(c.get().toGenericDict()));
    const std::vector<char> out = torch::pickle_save(results);
    std::ofstream f(argv[2], std::ios::binary);
    f.write(out.data(), static_cast<std::streamsize>(out.size()));
    return f.good() ? 0 : 1;
  } catch (const c10::Error& e) {
    std::cerr << "zipml_nn_parity: " << e.what_without_backtrace() << "\n";
    return 1;
  }
}
