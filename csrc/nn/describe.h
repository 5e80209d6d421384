// Shared by the layers' pretty_print: the base module's description without its
// "torch::nn::Conv2d(" prefix and closing parenthesis.
#pragma once
#include <sstream>
#include <string>

namespace zipml {
namespace nn {
namespace detail {

template <class Base>
std::string base_arguments(const Base& module) {
  std::ostringstream s;
  module.Base::pretty_print(s);
  const std::string text = s.str();
  const auto open = text.find('(');
  return text.substr(open + 1, text.size() - open - 2);
}

}  // namespace detail
}  // namespace nn
}  // namespace zipml
