// A LibTorch program using torch-zipml: quantizes a Gaussian tensor with zipml::fake_quantize at
// several bit widths and prints what it measured next to the theory of ZipML (arXiv 1611.05402):
//   * stochastic rounding is unbiased, E[Q(x)] = x, with variance s^2 (u - v)(v - l) for v = x / s
//     between levels l <= v <= u (Section 2): its measured bias is a few standard errors at most;
//   * variance-optimal levels (Section 5) have a smaller rounding variance than the uniform grid;
//   * nearest rounding has a smaller error but is biased per element.
// Exits with status 1 if a measurement disagrees with the theory (it is also a smoke test).
#include <zipml/zipml.h>

#include <cmath>
#include <cstdio>

namespace {

struct Row {
  double rms_error;   // sqrt(mean (Q(x) - x)^2) over all elements and draws
  double rms_theory;  // sqrt(mean s^2 (u - v)(v - l)): stochastic rounding's own prediction
  double bias;        // mean (Q(x) - x) over all elements and draws
  double bias_se;     // its standard error under the theory
  int64_t nbytes;     // storage of the quantized tensor
};

// Per-element variance of stochastic rounding, s^2 (u - v)(v - l), from the levels of `q`.
at::Tensor rounding_variance(const at::Tensor& x, const zipml::QuantizedTensor& q) {
  const at::Tensor levels = q.levels.to(at::kDouble), scale = q.scale.to(at::kDouble);
  const at::Tensor v = (x.to(at::kDouble) / scale).clamp(levels[0].item<double>(), levels[-1].item<double>());
  const at::Tensor j = (at::searchsorted(levels, v, /*out_int32=*/false, /*right=*/true) - 1)
                           .clamp(0, levels.numel() - 2);
  const at::Tensor lo = levels.index_select(0, j.reshape(-1)).reshape(v.sizes());
  const at::Tensor hi = levels.index_select(0, (j + 1).reshape(-1)).reshape(v.sizes());
  return (hi - v) * (v - lo) * scale * scale;
}

Row measure(const at::Tensor& x, int64_t bits, zipml::Rounding rounding, zipml::Levels levels, int draws) {
  const zipml::QuantizeOptions options =
      zipml::QuantizeOptions(bits).rounding(rounding).levels(levels).seed(2017);
  const zipml::QuantizedTensor q = zipml::quantize(x, options);
  const double n = double(x.numel());
  double sq = 0.0, sum = 0.0;
  for (int d = 0; d < draws; ++d) {
    zipml::QuantizeOptions o = options;
    const at::Tensor err = zipml::fake_quantize(x, o.offset(uint64_t(d))).to(at::kDouble) - x.to(at::kDouble);
    sq += err.square().sum().item<double>();
    sum += err.sum().item<double>();
  }
  const at::Tensor var = rounding_variance(x, q);
  return Row{std::sqrt(sq / (n * draws)), std::sqrt(var.mean().item<double>()), sum / (n * draws),
             std::sqrt(var.sum().item<double>() / (n * n * draws)), q.nbytes()};
}

}  // namespace

int main() {
  constexpr int64_t kNumel = 1 << 16;
  constexpr int kDraws = 32;
  at::manual_seed(0);
  const at::Tensor x = at::randn({kNumel});
  std::printf("zipml::fake_quantize of %lld N(0,1) values, per-tensor max-abs scale, %d draws each\n",
              static_cast<long long>(kNumel), kDraws);
  std::printf("%4s  %-10s  %-8s  %10s  %10s  %11s  %8s  %8s\n", "bits", "rounding", "levels", "rms error",
              "theory", "bias", "bias/se", "bytes");
  bool ok = true;
  for (int64_t bits : {1, 2, 4, 8}) {
    double uniform_theory = 0.0;
    for (zipml::Levels levels : {zipml::Levels::Uniform, zipml::Levels::Optimal}) {
      for (zipml::Rounding rounding : {zipml::Rounding::Stochastic, zipml::Rounding::Nearest}) {
        const bool stochastic = rounding == zipml::Rounding::Stochastic;
        const Row r = measure(x, bits, rounding, levels, stochastic ? kDraws : 1);
        const char* level_name = levels == zipml::Levels::Uniform ? "uniform" : "optimal";
        if (stochastic) {
          const double z = r.bias / r.bias_se;
          std::printf("%4lld  %-10s  %-8s  %10.4g  %10.4g  %+11.3e  %+8.2f  %8lld\n", static_cast<long long>(bits),
                      "stochastic", level_name, r.rms_error, r.rms_theory, r.bias, z,
                      static_cast<long long>(r.nbytes));
          // Unbiased within 5 standard errors; the error is the predicted one (within 2%: the
          // mean of 2M squared errors); optimal levels no worse than uniform.
          if (std::abs(z) > 5 || std::abs(r.rms_error / r.rms_theory - 1) > 0.02) ok = false;
          if (levels == zipml::Levels::Uniform) uniform_theory = r.rms_theory;
          else if (r.rms_theory > uniform_theory * (1 + 1e-9)) ok = false;
        } else {
          std::printf("%4lld  %-10s  %-8s  %10.4g  %10s  %+11.3e  %8s  %8lld\n", static_cast<long long>(bits),
                      "nearest", level_name, r.rms_error, "-", r.bias, "-", static_cast<long long>(r.nbytes));
        }
      }
    }
  }
  if (!ok) {
    std::printf("FAILED: a measurement disagrees with the theory of stochastic rounding\n");
    return 1;
  }
  std::printf("stochastic rounding: unbiased and at its predicted error at every width\n");
  return 0;
}
