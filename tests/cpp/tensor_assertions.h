// GoogleTest assertions on tensors, shared by the C++ suites.
#pragma once
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstddef>

namespace zipml::testing {

// Same dtype, shape and bytes (NaN payloads included); on failure, the first byte that differs.
inline ::testing::AssertionResult bitwise_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes())
    return ::testing::AssertionFailure() << a.scalar_type() << a.sizes() << " vs " << b.scalar_type() << b.sizes();
  const at::Tensor x = a.contiguous().cpu(), y = b.contiguous().cpu();
  const auto* p = static_cast<const unsigned char*>(x.data_ptr());
  const auto* q = static_cast<const unsigned char*>(y.data_ptr());
  const size_t nbytes = x.numel() * x.element_size();
  for (size_t i = 0; i < nbytes; ++i)
    if (p[i] != q[i])
      return ::testing::AssertionFailure() << "byte " << i << " differs (element " << i / x.element_size() << ": "
                                           << x.reshape(-1)[i / x.element_size()].item<double>() << " vs "
                                           << y.reshape(-1)[i / x.element_size()].item<double>() << ")";
  return ::testing::AssertionSuccess();
}

}  // namespace zipml::testing
