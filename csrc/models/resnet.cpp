// ResNet for 32x32 inputs (CIFAR variant, option A shortcuts): the C++ twin of torch_zipml/models.py.
#include <torch/nn/functional/padding.h>
#include <torch/nn/init.h>
#include <zipml/models.h>

namespace zipml {
namespace models {

BasicBlockImpl::BasicBlockImpl(int64_t in_planes, int64_t planes, int64_t stride_, nn::LayerFactory& layers,
                               const std::string& prefix)
    : stride(stride_), pad_channels(planes - in_planes) {
  using torch::nn::Conv2dOptions;
  conv1 = layers.conv2d(prefix + "conv1", Conv2dOptions(in_planes, planes, 3).stride(stride).padding(1).bias(false));
  register_module("conv1", conv1.ptr());
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(planes));
  conv2 = layers.conv2d(prefix + "conv2", Conv2dOptions(planes, planes, 3).stride(1).padding(1).bias(false));
  register_module("conv2", conv2.ptr());
  bn2 = register_module("bn2", torch::nn::BatchNorm2d(planes));
}

at::Tensor BasicBlockImpl::shortcut(const at::Tensor& x) const {
  at::Tensor s = x;
  if (stride != 1) s = s.slice(2, 0, std::nullopt, stride).slice(3, 0, std::nullopt, stride);
  if (pad_channels) s = at::constant_pad_nd(s, {0, 0, 0, 0, 0, pad_channels}, 0);
  return s;
}

at::Tensor BasicBlockImpl::forward(const at::Tensor& x) {
  at::Tensor out = at::relu(bn1->forward(conv1.forward(x)));
  out = bn2->forward(conv2.forward(out));
  return at::relu(out + shortcut(x));
}

ResNetCifarImpl::ResNetCifarImpl(int64_t depth_, int64_t num_classes, int64_t in_channels,
                                 const nn::QuantConfig& config)
    : depth(depth_) {
  TORCH_CHECK_VALUE(depth >= 8 && (depth - 2) % 6 == 0,
                    "depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got ", depth);
  const int64_t n = (depth - 2) / 6;
  nn::LayerFactory layers(config, /*num_layers=*/depth);  // 6n + 1 convolutions and the classifier

  // Built in the order of the Python model (the order of the random draws), registered in its order.
  conv1 = layers.conv2d("conv1", torch::nn::Conv2dOptions(in_channels, 16, 3).padding(1).bias(false));
  register_module("conv1", conv1.ptr());
  bn1 = register_module("bn1", torch::nn::BatchNorm2d(16));
  torch::nn::Sequential stages[3];
  int64_t in_planes = 16;
  const int64_t planes_of[3] = {16, 32, 64}, stride_of[3] = {1, 2, 2};
  for (int s = 0; s < 3; ++s) {
    stages[s] = torch::nn::Sequential();
    for (int64_t i = 0; i < n; ++i) {
      const std::string prefix = "layer" + std::to_string(s + 1) + "." + std::to_string(i) + ".";
      stages[s]->push_back(BasicBlock(in_planes, planes_of[s], i == 0 ? stride_of[s] : 1, layers, prefix));
      in_planes = planes_of[s];
    }
  }
  layer1 = register_module("layer1", stages[0]);
  layer2 = register_module("layer2", stages[1]);
  layer3 = register_module("layer3", stages[2]);
  fc = layers.linear("fc", torch::nn::LinearOptions(64, num_classes));
  register_module("fc", fc.ptr());

  torch::NoGradGuard no_grad;
  for (const auto& m : modules(/*include_self=*/false)) {
    if (auto* conv = dynamic_cast<torch::nn::Conv2dImpl*>(m.get())) {
      torch::nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanOut, torch::kReLU);
    } else if (auto* bn = dynamic_cast<torch::nn::BatchNorm2dImpl*>(m.get())) {
      torch::nn::init::ones_(bn->weight);
      torch::nn::init::zeros_(bn->bias);
    }
  }
  layers.finish();  // seeds drawn, if any, after the weights (as torch_zipml.convert after the model)
}

at::Tensor ResNetCifarImpl::forward(const at::Tensor& x) {
  at::Tensor y = at::relu(bn1->forward(conv1.forward(x)));
  y = layer3->forward(layer2->forward(layer1->forward(y)));
  y = at::flatten(at::adaptive_avg_pool2d(y, {1, 1}), 1);
  return fc.forward(y);
}

ResNetCifar make_model(const std::string& name, int64_t num_classes, int64_t in_channels,
                       const nn::QuantConfig& config) {
  for (int64_t depth : {20, 32, 56})
    if (name == "resnet" + std::to_string(depth)) return ResNetCifar(depth, num_classes, in_channels, config);
  TORCH_CHECK_VALUE(false, "model must be one of 'resnet20', 'resnet32', 'resnet56', got '", name, "'");
}

}  // namespace models
}  // namespace zipml
