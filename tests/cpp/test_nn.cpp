// The C++ front end of <zipml/nn.h> and <zipml/models.h>: each layer against the operator sequence it
// is defined by (the semantics torch_zipml.nn documents and the Python parity test checks across
// languages), the straight-through and quantized gradients, the XNOR-Net baselines against slow
// references and closed forms, the layer factory, the ResNet, batch-norm calibration and reproducibility.
#include <gtest/gtest.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/optim/sgd.h>
#include <zipml/models.h>
#include <zipml/nn.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "tensor_assertions.h"

namespace {

namespace znn = zipml::nn;
using zipml::Granularity;
using zipml::Levels;
using zipml::QuantizeOptions;
using zipml::Rounding;

using zipml::testing::bitwise_equal;

// Runs fn, expecting a c10::Error whose message contains `text`.
::testing::AssertionResult throws_with(const std::function<void()>& fn, const std::string& text) {
  try {
    fn();
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    if (what.find(text) != std::string::npos) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "message '" << what << "' lacks '" << text << "'";
  }
  return ::testing::AssertionFailure() << "no error (expected one with '" << text << "')";
}

struct Quant {
  int64_t bits;
  Levels levels = Levels::Uniform;
  Granularity granularity = Granularity::Tensor;
  Rounding rounding = Rounding::Stochastic;
  std::optional<at::Tensor> codebook = std::nullopt;

  znn::ZipOptions layer(uint64_t seed) const {
    return znn::ZipOptions()
        .weight_bits(bits)
        .weight_levels(levels)
        .granularity(granularity)
        .rounding(rounding)
        .codebook(codebook)
        .seed(seed);
  }
  QuantizeOptions op(uint64_t seed, uint64_t offset) const {
    return QuantizeOptions(bits)
        .levels(levels)
        .granularity(granularity)
        .rounding(rounding)
        .codebook(codebook)
        .seed(seed)
        .offset(offset);
  }
};

std::vector<Quant> quant_cases() {
  return {{2},
          {1, Levels::Uniform, Granularity::Channel},
          {4, Levels::Optimal, Granularity::Channel},
          {3, Levels::Uniform, Granularity::Tensor, Rounding::Nearest},
          {2, Levels::Codebook, Granularity::Tensor, Rounding::Stochastic, at::tensor({-1.0f, -0.2f, 0.3f, 1.0f})}};
}

// A ZipConv2d holding the weights of a plain Conv2d(3, 8, 3, padding 1) built under manual_seed(0).
std::pair<torch::nn::Conv2d, znn::ZipConv2d> conv_pair(const znn::ZipOptions& quant) {
  const auto options = torch::nn::Conv2dOptions(3, 8, 3).padding(1);
  torch::manual_seed(0);
  torch::nn::Conv2d plain(options);
  znn::ZipConv2d zip(options, quant);
  znn::load_state_dict(*zip, znn::state_dict(*plain));
  return {plain, zip};
}

// ---- ZipConv2d / ZipLinear: the documented per-forward semantics ---------------------------------

TEST(ZipConv2d, ForwardIsTheDocumentedOpSequence) {
  for (const Quant& q : quant_cases()) {
    auto [plain, zip] = conv_pair(q.layer(11));
    const at::Tensor x = at::randn({2, 3, 9, 9});
    for (uint64_t step = 0; step < 3; ++step) {
      const at::Tensor w_q = zipml::fake_quantize(plain->weight, q.op(11, znn::kStreamsPerStep * step));
      ASSERT_TRUE(bitwise_equal(zip(x), at::conv2d(x, w_q, plain->bias, 1, 1)))
          << "bits " << q.bits << " step " << step;
      ASSERT_EQ(zip->step, step + 1);
    }
  }
}

TEST(ZipLinear, ActBitsQuantizesTheInputOnStream2) {
  torch::manual_seed(0);
  znn::ZipLinear lin(torch::nn::LinearOptions(16, 4), znn::ZipOptions().weight_bits(3).act_bits(4).seed(5));
  const at::Tensor x = at::randn({6, 16});
  lin(x);
  const at::Tensor x_q = zipml::fake_quantize(x, QuantizeOptions(4).seed(5).offset(4 * 1 + znn::kStreamInput));
  const at::Tensor w_q =
      zipml::fake_quantize(lin->weight, QuantizeOptions(3).seed(5).offset(4 * 1 + znn::kStreamWeight));
  EXPECT_TRUE(bitwise_equal(lin(x), at::linear(x_q, w_q, lin->bias)));
}

TEST(ZipLinear, GradBitsQuantizesTheWeightGradientOnStream1) {
  const auto make = [](std::optional<int64_t> grad_bits) {
    torch::manual_seed(0);
    return znn::ZipLinear(
        torch::nn::LinearOptions(8, 5),
        znn::ZipOptions().weight_bits(4).grad_bits(grad_bits).granularity(Granularity::Channel).seed(9));
  };
  const at::Tensor x = at::randn({7, 8}), g = at::randn({7, 5});
  znn::ZipLinear lin = make(3);
  lin(x).backward(g);

  // The reference: the operators in the documented order, on a leaf copy of the weight.
  const at::Tensor w = lin->weight.detach().clone().requires_grad_(true);
  const at::Tensor w_g = zipml::quantize_grad(w, 3, Granularity::Channel, 9, znn::kStreamGrad);
  const at::Tensor w_q = zipml::fake_quantize(w_g, QuantizeOptions(4).granularity(Granularity::Channel).seed(9));
  at::linear(x, w_q, lin->bias.detach()).backward(g);
  EXPECT_TRUE(bitwise_equal(lin->weight.grad(), w.grad()));

  // It is quantized: at most 2^3 values per output row, and not the plain straight-through gradient.
  for (int64_t r = 0; r < 5; ++r) EXPECT_LE(std::get<0>(at::_unique(lin->weight.grad()[r])).numel(), 8);
  znn::ZipLinear plain = make(std::nullopt);
  plain(x).backward(g);
  EXPECT_FALSE(at::equal(plain->weight.grad(), lin->weight.grad()));
  EXPECT_TRUE(bitwise_equal(plain->bias.grad(), lin->bias.grad()));  // the bias stays FP32
}

TEST(ZipConv2d, StraightThroughGradientsOfInputWeightAndBias) {
  auto [plain, zip] = conv_pair(znn::ZipOptions().weight_bits(2).seed(3));
  const at::Tensor x0 = at::randn({2, 3, 7, 7}), g = at::randn({2, 8, 7, 7});
  const at::Tensor x = x0.clone().requires_grad_(true);
  zip(x).backward(g);
  // conv2d with the quantized weight as a leaf: dL/dW_q is what the master weight receives.
  const at::Tensor w_q = zipml::fake_quantize(plain->weight.detach(), QuantizeOptions(2).seed(3)).requires_grad_(true);
  const at::Tensor b = plain->bias.detach().clone().requires_grad_(true);
  const at::Tensor x_ref = x0.clone().requires_grad_(true);
  at::conv2d(x_ref, w_q, b, 1, 1).backward(g);
  EXPECT_TRUE(bitwise_equal(zip->weight.grad(), w_q.grad()));
  EXPECT_TRUE(bitwise_equal(zip->bias.grad(), b.grad()));
  EXPECT_TRUE(bitwise_equal(x.grad(), x_ref.grad()));
}

TEST(ZipConv2d, EvalUsesAFixedDrawOrNearestAndKeepsTheStep) {
  auto [plain, zip] = conv_pair(znn::ZipOptions().weight_bits(2).seed(11));
  const at::Tensor x = at::randn({2, 3, 9, 9});
  zip(x);
  zip->eval();
  const at::Tensor fixed = zipml::fake_quantize(plain->weight, QuantizeOptions(2).seed(11).offset(4 * znn::kEvalStep));
  EXPECT_TRUE(bitwise_equal(zip(x), at::conv2d(x, fixed, plain->bias, 1, 1)));
  EXPECT_TRUE(bitwise_equal(zip(x), zip(x)));
  EXPECT_EQ(zip->step, 1u);
  zip->set_eval_rounding(znn::EvalRounding::Nearest);
  const at::Tensor nearest = zipml::fake_quantize(plain->weight, QuantizeOptions(2).rounding(Rounding::Nearest));
  EXPECT_TRUE(bitwise_equal(zip(x), at::conv2d(x, nearest, plain->bias, 1, 1)));
  zip->train();
  zip(x);
  EXPECT_EQ(zip->step, 2u);
}

TEST(ZipConv2d, ShapesParametersAndStateDictMatchConv2d) {
  const at::Tensor x = at::randn({2, 8, 11, 13});
  const std::vector<torch::nn::Conv2dOptions> variants = {
      torch::nn::Conv2dOptions(8, 12, 3), torch::nn::Conv2dOptions(8, 12, 3).stride(2).padding(2).dilation(2),
      torch::nn::Conv2dOptions(8, 12, 3).groups(4).bias(false),
      torch::nn::Conv2dOptions(8, 12, 3).padding(torch::kSame).padding_mode(torch::kReflect)};
  for (const auto& o : variants) {
    torch::nn::Conv2d plain(o);
    znn::ZipConv2d zip(o, znn::ZipOptions().weight_bits(4).seed(1));
    EXPECT_EQ(zip(x).sizes(), plain(x).sizes());
    std::vector<std::string> keys, plain_keys;
    for (const auto& item : znn::state_dict(*zip)) keys.push_back(item.key());
    for (const auto& item : znn::state_dict(*plain)) plain_keys.push_back(item.key());
    EXPECT_EQ(keys, plain_keys);
    EXPECT_EQ(keys.size(), o.bias() ? 2u : 1u);
    znn::load_state_dict(*zip, znn::state_dict(*plain));
    EXPECT_TRUE(bitwise_equal(zip->weight, plain->weight));
    EXPECT_NE(zip->as<torch::nn::Conv2d>(), nullptr);  // a Conv2d, like Python's isinstance
  }
  znn::ZipLinear lin(torch::nn::LinearOptions(16, 7), znn::ZipOptions().seed(1));
  EXPECT_EQ(lin(at::randn({2, 5, 16})).sizes(), (std::vector<int64_t>{2, 5, 7}));
  EXPECT_NE(lin->as<torch::nn::Linear>(), nullptr);
}

TEST(ZipOptions, RejectsBadOptionsNamingTheOption) {
  const auto conv = [](znn::ZipOptions o) { znn::ZipConv2d(torch::nn::Conv2dOptions(3, 8, 3), o); };
  EXPECT_TRUE(throws_with([&] { conv(znn::ZipOptions().weight_bits(9)); },
                          "weight_bits must be an integer from 1 to 8, got 9"));
  EXPECT_TRUE(
      throws_with([&] { conv(znn::ZipOptions().grad_bits(0)); }, "grad_bits must be an integer from 1 to 8, got 0"));
  EXPECT_TRUE(throws_with([&] { conv(znn::ZipOptions().act_bits(12)); }, "act_bits must be an integer from 1 to 8"));
  EXPECT_TRUE(throws_with([&] { conv(znn::ZipOptions().granularity(Granularity::Row)); },
                          "granularity must be Granularity::Tensor or Granularity::Channel"));
  EXPECT_TRUE(throws_with([&] { conv(znn::ZipOptions().candidates(1)); }, "candidates must be an integer >= 2, got 1"));
  EXPECT_TRUE(
      throws_with([&] { conv(znn::ZipOptions().weight_levels(Levels::Codebook)); }, "pass them with codebook(tensor)"));
  EXPECT_TRUE(throws_with(
      [&] {
        conv(znn::ZipOptions().codebook(at::tensor({-1.0f, 1.0f})));
      },
      "a codebook was given but weight_levels is Levels::uniform"));
  EXPECT_TRUE(throws_with(
      [&] { conv(znn::ZipOptions().weight_bits(2).weight_levels(Levels::Codebook).codebook(at::linspace(-1, 1, 5))); },
      "codebook must be 1-D with 1 to 2**weight_bits = 4 levels"));
  EXPECT_TRUE(
      throws_with([&] { znn::BWNConv2d(torch::nn::Conv2dOptions(3, 8, 3), 0.0); }, "clip must be a positive number"));
}

TEST(ZipConv2d, ReproducibleAndSeededLikePython) {
  auto [plain_a, a] = conv_pair(znn::ZipOptions().seed(3));
  auto [plain_b, b] = conv_pair(znn::ZipOptions().seed(3));
  auto [plain_c, c] = conv_pair(znn::ZipOptions().seed(4));
  const at::Tensor x = at::randn({2, 3, 9, 9});
  for (int step = 0; step < 3; ++step) {
    const at::Tensor ya = a(x);
    EXPECT_TRUE(bitwise_equal(ya, b(x)));
    EXPECT_FALSE(at::equal(ya, c(x)));
  }
  // No seed: drawn from the default generator after the weights' initialisation, as in Python.
  torch::manual_seed(7);
  znn::ZipConv2d drawn(torch::nn::Conv2dOptions(3, 8, 3), znn::ZipOptions());
  torch::manual_seed(7);
  torch::nn::Conv2d twin(torch::nn::Conv2dOptions(3, 8, 3));
  EXPECT_EQ(drawn->seed, zipml::draw_seed());
  EXPECT_TRUE(bitwise_equal(drawn->weight, twin->weight));
}

TEST(ZipConv2d, CloneCopiesTheWholeLayer) {
  auto [plain, zip] = conv_pair(znn::ZipOptions().weight_bits(3).weight_levels(Levels::Optimal).seed(21));
  const at::Tensor x = at::randn({1, 3, 6, 6});
  zip(x);
  const auto copy = std::dynamic_pointer_cast<znn::ZipConv2dImpl>(zip->clone());
  ASSERT_NE(copy, nullptr);
  EXPECT_EQ(copy->seed, 21u);
  EXPECT_EQ(copy->step, 1u);
  EXPECT_EQ(copy->quant().weight_levels(), Levels::Optimal);
  EXPECT_TRUE(bitwise_equal(copy->forward(x), zip(x)));
  {
    torch::NoGradGuard no_grad;
    copy->weight.add_(1.0);
  }
  EXPECT_FALSE(at::equal(copy->weight, zip->weight));  // deep copy
}

// ---- XNOR-Net baselines --------------------------------------------------------------------------

TEST(Xnor, BinarizeAndItsClippedStraightThroughGradient) {
  const at::Tensor v = at::tensor({-2.0f, -1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 2.0f}).requires_grad_(true);
  const at::Tensor b = znn::binarize(v);
  EXPECT_TRUE(bitwise_equal(b, at::tensor({-1.0f, -1.0f, -1.0f, -1.0f, 1.0f, 1.0f, 1.0f})));
  b.backward(at::full({7}, 3.0f));
  EXPECT_TRUE(bitwise_equal(v.grad(), at::tensor({0.0f, 3.0f, 3.0f, 3.0f, 3.0f, 3.0f, 0.0f})));
}

TEST(Xnor, BinaryWeightGradientIsTheClosedForm) {
  torch::manual_seed(2);
  const at::Tensor w0 = at::randn({4, 3, 2, 2}, at::kDouble) * 0.8;
  const at::Tensor g = at::randn({4, 3, 2, 2}, at::kDouble);
  const at::Tensor w = w0.clone().requires_grad_(true);
  znn::binary_weight(w).backward(g);
  // dL/dW_j = alpha * g_j * 1[|W_j| <= 1] + sign(W_j) / n * sum_i g_i sign(W_i), per output channel.
  const int64_t n = 12;
  const at::Tensor sign = at::where(w0 > 0, 1.0, -1.0).to(at::kDouble);
  const at::Tensor alpha = w0.abs().reshape({4, n}).mean(1).view({4, 1, 1, 1});
  const at::Tensor cross = (g * sign).reshape({4, n}).sum(1).view({4, 1, 1, 1});
  const at::Tensor expected = alpha * g * (w0.abs() <= 1.0).to(at::kDouble) + sign / n * cross;
  EXPECT_TRUE(at::allclose(w.grad(), expected, 1e-12, 1e-12));
  // The forward value.
  EXPECT_TRUE(at::allclose(znn::binary_weight(w0), sign * alpha));
}

// XNOR-Net's convolution by loops: sign(x) zero-padded, the box-filtered mean |x| as K.
at::Tensor xnor_conv_reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, int64_t stride,
                               int64_t pad) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), O = w.size(0), k = w.size(2);
  const int64_t Ho = (H + 2 * pad - k) / stride + 1, Wo = (W + 2 * pad - k) / stride + 1;
  const at::Tensor alpha = w.abs().reshape({O, -1}).mean(1);
  at::Tensor y = at::zeros({N, O, Ho, Wo}, at::kDouble);
  const auto xs = x.accessor<double, 4>();
  const auto ws = w.accessor<double, 4>();
  auto out = y.accessor<double, 4>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < Ho; ++i)
        for (int64_t j = 0; j < Wo; ++j) {
          double dot = 0, a = 0;
          for (int64_t di = 0; di < k; ++di)
            for (int64_t dj = 0; dj < k; ++dj) {
              const int64_t r = i * stride + di - pad, s = j * stride + dj - pad;
              if (r < 0 || r >= H || s < 0 || s >= W) continue;
              double mean_abs = 0;
              for (int64_t c = 0; c < C; ++c) {
                dot += (xs[n][c][r][s] > 0 ? 1.0 : -1.0) * (ws[o][c][di][dj] > 0 ? 1.0 : -1.0);
                mean_abs += std::abs(xs[n][c][r][s]);
              }
              a += mean_abs / C;
            }
          out[n][o][i][j] = dot * alpha[o].item<double>() * (a / (k * k)) + bias[o].item<double>();
        }
  return y;
}

TEST(Xnor, XNORConv2dAgainstALoopReference) {
  for (int64_t stride : {1, 2}) {
    torch::manual_seed(stride);
    znn::XNORConv2d conv(torch::nn::Conv2dOptions(3, 4, 3).stride(stride).padding(1));
    conv->to(at::kDouble);
    const at::Tensor x = at::randn({2, 3, 6, 6}, at::kDouble);
    EXPECT_TRUE(at::allclose(conv(x), xnor_conv_reference(x, conv->weight.detach(), conv->bias.detach(), stride, 1),
                             1e-10, 1e-10))
        << "stride " << stride;
  }
  znn::XNORLinear lin(torch::nn::LinearOptions(5, 3));
  const at::Tensor x = at::randn({4, 5});
  const at::Tensor sign_w = at::where(lin->weight > 0, 1.0f, -1.0f), sign_x = at::where(x > 0, 1.0f, -1.0f);
  const at::Tensor expected =
      at::matmul(sign_x, (sign_w * lin->weight.abs().mean(1, true)).t()) * x.abs().mean(1, true) + lin->bias;
  EXPECT_TRUE(at::allclose(lin(x), expected, 1e-5, 1e-6));
}

TEST(Xnor, XNORConv2dRejectsWhatKCannotDescribe) {
  EXPECT_TRUE(throws_with([] { znn::XNORConv2d(torch::nn::Conv2dOptions(4, 4, 3).groups(2)); }, "groups must be 1"));
  EXPECT_TRUE(
      throws_with([] { znn::XNORConv2d(torch::nn::Conv2dOptions(4, 4, 3).padding(1).padding_mode(torch::kReflect)); },
                  "padding_mode must be zeros"));
  EXPECT_TRUE(throws_with([] { znn::XNORConv2d(torch::nn::Conv2dOptions(4, 4, 3).padding(torch::kSame)); },
                          "padding must be given as numbers"));
}

TEST(Xnor, BWNLayersUseTheBinaryWeight) {
  znn::BWNConv2d conv(torch::nn::Conv2dOptions(3, 5, 3).padding(1));
  const at::Tensor x = at::randn({2, 3, 6, 6});
  EXPECT_TRUE(bitwise_equal(conv(x), at::conv2d(x, znn::binary_weight(conv->weight), conv->bias, 1, 1)));
  znn::BWNLinear lin(torch::nn::LinearOptions(6, 2));
  const at::Tensor v = at::randn({3, 6});
  EXPECT_TRUE(bitwise_equal(lin(v), at::linear(v, znn::binary_weight(lin->weight), lin->bias)));
}

// ---- QuantConfig, LayerFactory, ResNet ------------------------------------------------------------

TEST(QuantConfig, SkipsFirstAndLastThenAppliesOverridesInOrder) {
  znn::QuantConfig config;
  config.zipml.weight_bits(2);
  config.overrides.push_back({"layer1.*", [](znn::QuantConfig& c) { c.zipml.weight_bits(4); }});
  config.overrides.push_back({"layer1.1.*", [](znn::QuantConfig& c) { c.scheme = znn::Scheme::BWN; }});
  EXPECT_EQ(config.resolve("conv1", 0, 5).scheme, znn::Scheme::FP32);
  EXPECT_EQ(config.resolve("fc", 4, 5).scheme, znn::Scheme::FP32);
  const znn::QuantConfig l10 = config.resolve("layer1.0.conv1", 1, 5);
  EXPECT_EQ(l10.scheme, znn::Scheme::ZipML);
  EXPECT_EQ(l10.zipml.weight_bits(), 4);
  EXPECT_EQ(config.resolve("layer1.1.conv1", 2, 5).scheme, znn::Scheme::BWN);
  EXPECT_EQ(config.resolve("layer2.0.conv1", 3, 5).zipml.weight_bits(), 2);
  config.skip_first_last = false;
  EXPECT_EQ(config.resolve("conv1", 0, 5).scheme, znn::Scheme::ZipML);
  EXPECT_TRUE(
      throws_with([] { znn::parse_scheme("ternary"); }, "scheme must be one of 'fp32', 'bwn', 'xnor', 'zipml'"));

  znn::QuantConfig xnor;
  xnor.scheme = znn::Scheme::XNOR;
  xnor.skip_first_last = false;
  znn::LayerFactory layers(xnor, 1);
  EXPECT_TRUE(throws_with([&] { layers.conv2d("grouped", torch::nn::Conv2dOptions(4, 4, 3).groups(2)); },
                          "layer 'grouped' cannot take scheme 'xnor': XNORConv2d: groups must be 1"));
}

TEST(ResNet, ArchitectureMatchesThePythonModel) {
  zipml::models::ResNetCifar model(20, 10, 3);
  int64_t count = 0;
  for (const auto& p : model->parameters()) count += p.numel();
  EXPECT_EQ(count, 269722);  // sum(p.numel() for p in torch_zipml.models.resnet20().parameters())
  std::vector<std::string> keys;
  for (const auto& item : znn::state_dict(*model)) keys.push_back(item.key());
  ASSERT_EQ(keys.size(), 116u);
  const std::vector<std::string> head = {"conv1.weight",          "bn1.weight",         "bn1.bias",
                                         "bn1.running_mean",      "bn1.running_var",    "bn1.num_batches_tracked",
                                         "layer1.0.conv1.weight", "layer1.0.bn1.weight"};
  EXPECT_EQ(std::vector<std::string>(keys.begin(), keys.begin() + 8), head);
  EXPECT_EQ(keys[113], "layer3.2.bn2.num_batches_tracked");
  EXPECT_EQ(keys[114], "fc.weight");
  EXPECT_EQ(keys[115], "fc.bias");
  EXPECT_EQ(model(at::randn({2, 3, 32, 32})).sizes(), (std::vector<int64_t>{2, 10}));
  zipml::models::ResNetCifar small(8, 10, 1);
  count = 0;
  for (const auto& p : small->parameters()) count += p.numel();
  EXPECT_EQ(count, 75002);
  EXPECT_TRUE(throws_with([] { zipml::models::ResNetCifar(21); }, "depth must be 6n + 2"));
  EXPECT_TRUE(throws_with([] { zipml::models::make_model("resnet18", 10, 3); }, "model must be one of"));
}

TEST(ResNet, QuantConfigDecidesEachLayerAndItsSeed) {
  znn::QuantConfig config;
  config.zipml.weight_bits(2).seed(100);
  zipml::models::ResNetCifar model(20, 10, 3, config);
  const auto schemes = znn::layer_schemes(*model);
  ASSERT_EQ(schemes.size(), 20u);
  EXPECT_EQ(schemes.front(), std::make_pair(std::string("conv1"), znn::Scheme::FP32));
  EXPECT_EQ(schemes.back(), std::make_pair(std::string("fc"), znn::Scheme::FP32));
  for (size_t i = 1; i + 1 < schemes.size(); ++i) EXPECT_EQ(schemes[i].second, znn::Scheme::ZipML);
  const auto rng = znn::rng_state(*model);
  ASSERT_EQ(rng.size(), 18u);
  EXPECT_EQ(rng["layer1.0.conv1"].seed, 101u);  // layer index 1
  EXPECT_EQ(rng["layer3.2.conv2"].seed, 118u);

  // No seed: one base seed drawn after the weights are initialised (where Python's convert draws it).
  znn::QuantConfig unseeded;
  torch::manual_seed(5);
  zipml::models::ResNetCifar drawn(8, 10, 1, unseeded);
  torch::manual_seed(5);
  zipml::models::ResNetCifar plain(8, 10, 1);
  const uint64_t base = zipml::draw_seed();
  EXPECT_EQ(znn::rng_state(*drawn)["layer1.0.conv1"].seed, base + 1);
  const auto a = znn::state_dict(*drawn), b = znn::state_dict(*plain);
  for (const auto& item : a) EXPECT_TRUE(bitwise_equal(item.value(), b[item.key()])) << item.key();

  znn::QuantConfig xnor;
  xnor.scheme = znn::Scheme::XNOR;
  xnor.overrides.push_back({"layer2.0.conv1", [](znn::QuantConfig& c) { c.scheme = znn::Scheme::FP32; }});
  zipml::models::ResNetCifar mixed(8, 10, 1, xnor);
  const auto mixed_schemes = znn::layer_schemes(*mixed);
  EXPECT_EQ(mixed_schemes[1].second, znn::Scheme::XNOR);
  EXPECT_EQ(mixed_schemes[3].second, znn::Scheme::FP32);  // layer2.0.conv1
}

TEST(ResNet, StateDictAndRngStateRestoreTheExactStreams) {
  znn::QuantConfig config;
  config.zipml.weight_bits(2).weight_levels(Levels::Optimal).granularity(Granularity::Channel).grad_bits(8).seed(1);
  torch::manual_seed(0);
  zipml::models::ResNetCifar a(8, 10, 1, config);
  const at::Tensor x = at::randn({4, 1, 32, 32});
  a(x);
  a(x);
  config.zipml.seed(77);
  torch::manual_seed(1);
  zipml::models::ResNetCifar b(8, 10, 1, config);
  znn::load_state_dict(*b, znn::state_dict(*a));
  znn::set_rng_state(*b, znn::rng_state(*a));
  EXPECT_TRUE(bitwise_equal(b(x), a(x)));  // the third training step of both
  a->eval();
  b->eval();
  EXPECT_TRUE(bitwise_equal(b(x), a(x)));

  auto partial = znn::rng_state(*a);
  partial.erase("layer1.0.conv1");
  EXPECT_TRUE(throws_with([&] { znn::set_rng_state(*b, partial); }, "missing: ['layer1.0.conv1']"));
  auto state = znn::state_dict(*a);
  state.erase("fc.bias");
  EXPECT_TRUE(throws_with([&] { znn::load_state_dict(*b, state); }, "missing: ['fc.bias']"));
}

TEST(CalibratedBatchNorm, AveragesBatchStatisticsAndRestoresTheModel) {
  torch::manual_seed(0);
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(2, 3, 3)), torch::nn::BatchNorm2d(3));
  for (int i = 0; i < 3; ++i) net->forward(at::randn({4, 2, 6, 6}));  // running statistics of its own
  const auto before = znn::state_dict(*net);
  std::vector<at::Tensor> batches = {at::randn({5, 2, 6, 6}), at::randn({5, 2, 6, 6}) * 2 + 1, at::randn({5, 2, 6, 6})};
  auto* bn = net[1]->as<torch::nn::BatchNorm2d>();
  {
    znn::CalibratedBatchNorm calibrated(
        *net, [&](const at::Tensor& x) { net->forward(x); }, batches);
    at::Tensor mean = at::zeros({3}, at::kDouble), var = at::zeros({3}, at::kDouble);
    for (const auto& x : batches) {
      const at::Tensor h = net[0]->as<torch::nn::Conv2d>()->forward(x).to(at::kDouble).transpose(0, 1).reshape({3, -1});
      mean += h.mean(1) / 3.0;
      var += h.var(1, /*unbiased=*/true) / 3.0;
    }
    EXPECT_TRUE(at::allclose(bn->running_mean.to(at::kDouble), mean, 1e-5, 1e-6));
    EXPECT_TRUE(at::allclose(bn->running_var.to(at::kDouble), var, 1e-5, 1e-6));
    EXPECT_EQ(bn->num_batches_tracked.item<int64_t>(), 3);
    EXPECT_FALSE(net->is_training());
    EXPECT_FALSE(bn->is_training());
  }
  for (const auto& item : znn::state_dict(*net))
    EXPECT_TRUE(bitwise_equal(item.value(), before[item.key()])) << item.key();
  EXPECT_EQ(bn->options.momentum(), std::optional<double>(0.1));
  EXPECT_TRUE(
      throws_with([&] { znn::CalibratedBatchNorm none(*net, [&](const at::Tensor& x) { net->forward(x); }, {}); },
                  "no batches given"));
  EXPECT_TRUE(bitwise_equal(bn->running_mean, before["1.running_mean"]));  // restored after the error too
}

// A few SGD steps of a quantized ResNet: the same seeds give the same bits, another Philox seed does not.
std::vector<at::Tensor> train_steps(uint64_t philox_seed) {
  znn::QuantConfig config;
  config.zipml.weight_bits(2)
      .weight_levels(Levels::Optimal)
      .granularity(Granularity::Channel)
      .grad_bits(8)
      .seed(philox_seed);
  torch::manual_seed(3);
  zipml::models::ResNetCifar model(8, 10, 1, config);
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(5e-4));
  const at::Tensor x = at::randn({8, 1, 32, 32});
  const at::Tensor y = at::randint(0, 10, {8});
  for (int step = 0; step < 3; ++step) {
    sgd.zero_grad();
    at::cross_entropy_loss(model(x), y).backward();
    sgd.step();
  }
  return model->parameters();
}

TEST(Training, QuantizedStepsAreReproducible) {
  const auto a = train_steps(10), b = train_steps(10), c = train_steps(11);
  ASSERT_EQ(a.size(), b.size());
  bool differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(bitwise_equal(a[i], b[i])) << "parameter " << i;
    differs = differs || !at::equal(a[i], c[i]);
  }
  EXPECT_TRUE(differs);
}

}  // namespace
