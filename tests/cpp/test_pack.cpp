// The bit packing of kernels/common/pack.h against a bit-by-bit reference: every width 1..8, lengths
// that fill and that do not fill the last byte.
#include <gtest/gtest.h>

#include <random>

#include "kernels/common/pack.h"
#include "reference.h"

namespace {

std::vector<uint8_t> random_codes(size_t n, int bits, std::mt19937& gen) {
  std::vector<uint8_t> codes(n);
  for (auto& c : codes) c = uint8_t(gen() & ((1u << bits) - 1u));
  return codes;
}

std::vector<uint8_t> kernel_pack(const std::vector<uint8_t>& codes, int bits) {
  std::vector<uint8_t> out(zipml::kernel::packed_bytes(int64_t(codes.size()), bits));
  for (size_t b = 0; b < out.size(); ++b)
    out[b] = zipml::kernel::pack_byte(codes.data(), int64_t(codes.size()), bits, int64_t(b));
  return out;
}

class PackBits : public ::testing::TestWithParam<int> {};

TEST_P(PackBits, MatchesBitByBitReferenceAndRoundTrips) {
  const int bits = GetParam();
  std::mt19937 gen(1000 + bits);
  for (size_t n = 0; n <= 67; ++n) {
    const std::vector<uint8_t> codes = random_codes(n, bits, gen);
    const std::vector<uint8_t> packed = kernel_pack(codes, bits);
    ASSERT_EQ(packed.size(), (n * bits + 7) / 8) << "n=" << n;
    ASSERT_EQ(packed, zipml::reference::pack_bits(codes, bits)) << "n=" << n;
    for (size_t i = 0; i < n; ++i)
      ASSERT_EQ(zipml::kernel::unpack_code(packed.data(), bits, int64_t(i)), codes[i]) << "n=" << n << " i=" << i;
  }
}

// The highest code everywhere sets every used bit and must leave the unused tail of the last byte 0.
TEST_P(PackBits, AllOnesLeavesTailZero) {
  const int bits = GetParam();
  for (size_t n : {1, 3, 5, 7, 9, 13}) {
    const std::vector<uint8_t> codes(n, uint8_t((1u << bits) - 1u));
    const std::vector<uint8_t> packed = kernel_pack(codes, bits);
    const size_t used = n * bits % 8;
    if (used) EXPECT_EQ(packed.back(), uint8_t((1u << used) - 1u)) << "n=" << n;
    EXPECT_EQ(zipml::reference::unpack_bits(packed, bits, n), codes);
  }
}

INSTANTIATE_TEST_SUITE_P(Widths, PackBits, ::testing::Range(1, 9),
                         [](const auto& info) { return std::to_string(info.param) + "bit"; });

}  // namespace
