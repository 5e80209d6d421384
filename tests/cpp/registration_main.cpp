// A program that reaches the zipml operators only through the dispatcher, as a TorchScript model or
// torch::ops caller does, and so references no symbol of libzipml.so. Exits 0 if the operators
// are registered (the library was loaded and its TORCH_LIBRARY initializers ran), 1 otherwise.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>

int main() {
  const auto handle = c10::Dispatcher::singleton().findSchema({"zipml::fake_quantize", ""});
  if (!handle) {
    std::fprintf(stderr, "zipml::fake_quantize is not registered: libzipml.so was not loaded\n");
    return 1;
  }
  const at::Tensor x = at::linspace(-1.0, 1.0, 5);
  const at::Tensor y = handle->typed<at::Tensor(const at::Tensor&, int64_t, c10::string_view, c10::string_view,
                                                const std::optional<at::Tensor>&, c10::string_view,
                                                const std::optional<at::Tensor>&, int64_t, int64_t, int64_t)>()
                           .call(x, 1, "nearest", "uniform", std::nullopt, "tensor", std::nullopt, 0, 0, 1024);
  // 1-bit nearest rounding on [-1, 1]: the signs.
  if (!at::equal(y, at::tensor({-1.0f, -1.0f, 1.0f, 1.0f, 1.0f}))) {
    std::fprintf(stderr, "zipml::fake_quantize returned a wrong result\n");
    return 1;
  }
  std::printf("zipml operators registered and callable through the dispatcher\n");
  return 0;
}
