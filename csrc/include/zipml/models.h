// torch-zipml for LibTorch: ResNet-20/32/56 for 32x32 inputs, the C++ twin of torch_zipml/models.py
// (same layer names, parameter order and initialisation, so state dicts map 1:1 and, under the same
// torch::manual_seed, the same initial weights).
//
//   #include <zipml/models.h>
//   zipml::nn::QuantConfig config;                     // ZipML, first and last layers FP32
//   config.zipml.weight_bits(2).weight_levels(zipml::Levels::Optimal).granularity(zipml::Granularity::Channel).seed(0);
//   zipml::models::ResNetCifar model(20, /*num_classes=*/10, /*in_channels=*/1, config);
//
// He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition" (CVPR 2016), Section 4.2: a 3x3
// convolution with 16 filters, three stages of n basic blocks with 16, 32 and 64 filters on 32x32,
// 16x16 and 8x8 maps (depth 6n + 2), global average pooling, a linear classifier. Batch norm after
// every convolution; shortcuts of option A (identity; where the map halves, the input subsampled by 2
// and zero-padded with the new channels, no parameters). Initialisation: convolutions Kaiming-normal
// (fan_out, ReLU gain), batch norm weight 1 and bias 0, the classifier torch::nn::Linear's default.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>
#include <zipml/nn.h>

#include <cstdint>
#include <string>

namespace zipml {
namespace models {

class BasicBlockImpl : public torch::nn::Module {
 public:
  // Its two convolutions come from `layers`, named prefix + "conv1" / "conv2".
  BasicBlockImpl(int64_t in_planes, int64_t planes, int64_t stride, nn::LayerFactory& layers,
                 const std::string& prefix);
  at::Tensor forward(const at::Tensor& x);

  torch::nn::AnyModule conv1, conv2;
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  int64_t stride;
  int64_t pad_channels;  // option A: zero channels appended to the shortcut

 private:
  at::Tensor shortcut(const at::Tensor& x) const;
};
TORCH_MODULE(BasicBlock);

class ResNetCifarImpl : public torch::nn::Module {
 public:
  // depth = 6n + 2 (20, 32, 44, 56, 110, ...); config decides each Conv2d / Linear (default: all FP32).
  explicit ResNetCifarImpl(int64_t depth = 20, int64_t num_classes = 10, int64_t in_channels = 3,
                           const nn::QuantConfig& config = nn::QuantConfig::fp32());
  at::Tensor forward(const at::Tensor& x);

  int64_t depth;
  torch::nn::AnyModule conv1, fc;
  torch::nn::BatchNorm2d bn1{nullptr};
  torch::nn::Sequential layer1{nullptr}, layer2{nullptr}, layer3{nullptr};
};
TORCH_MODULE(ResNetCifar);

// "resnet20", "resnet32" or "resnet56" (as torch_zipml.models.MODELS).
ResNetCifar make_model(const std::string& name, int64_t num_classes, int64_t in_channels,
                       const nn::QuantConfig& config = nn::QuantConfig::fp32());

}  // namespace models
}  // namespace zipml
