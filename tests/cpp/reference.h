// Slow, obvious references for the GoogleTest suite: written from the specifications (Random123,
// the bit layout of kernels/common/pack.h, the definition of stochastic rounding in ZipML Section 2),
// not from the kernels, so that a kernel bug cannot hide in a shared helper.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

namespace zipml::reference {

// Philox4x32 with a chosen number of rounds (Salmon et al., SC'11, and Random123's philox.h):
// each round multiplies words 0 and 2 by the round multipliers, swaps the halves across, xors in
// the key, and the key is bumped by the Weyl constants between rounds.
inline std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> ctr, std::array<uint32_t, 2> key, int rounds) {
  const uint64_t M0 = 0xD2511F53, M1 = 0xCD9E8D57;
  const uint32_t W0 = 0x9E3779B9, W1 = 0xBB67AE85;
  for (int r = 0; r < rounds; ++r) {
    const uint64_t p0 = M0 * ctr[0], p1 = M1 * ctr[2];
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0), hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    ctr = {hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0};
    key = {key[0] + W0, key[1] + W1};
  }
  return ctr;
}

// Bit k of the packed stream is bit (k mod b) of code floor(k / b), least significant first.
inline std::vector<uint8_t> pack_bits(const std::vector<uint8_t>& codes, int bits) {
  std::vector<uint8_t> out((codes.size() * bits + 7) / 8, 0);
  for (size_t i = 0; i < codes.size(); ++i)
    for (int b = 0; b < bits; ++b)
      if ((codes[i] >> b) & 1) {
        const size_t k = i * bits + b;
        out[k / 8] = uint8_t(out[k / 8] | (1u << (k % 8)));
      }
  return out;
}

inline std::vector<uint8_t> unpack_bits(const std::vector<uint8_t>& packed, int bits, size_t n) {
  std::vector<uint8_t> codes(n, 0);
  for (size_t i = 0; i < n; ++i)
    for (int b = 0; b < bits; ++b) {
      const size_t k = i * bits + b;
      if ((packed[k / 8] >> (k % 8)) & 1) codes[i] = uint8_t(codes[i] | (1u << b));
    }
  return codes;
}

// The interval [L_j, L_j+1] holding v, by linear scan: the largest j <= K-2 with L_j <= v.
inline int interval_of(double v, const std::vector<double>& levels) {
  int j = 0;
  for (int i = 0; i + 1 < int(levels.size()); ++i)
    if (levels[i] <= v) j = i;
  return j;
}

// The level nearest to v, by exhaustive search.
inline int nearest_level(double v, const std::vector<double>& levels) {
  int best = 0;
  for (int i = 1; i < int(levels.size()); ++i)
    if (std::abs(levels[i] - v) < std::abs(levels[best] - v)) best = i;
  return best;
}

// Variance of stochastic rounding of v between its neighbouring levels: (u - v)(v - l).
inline double rounding_variance(double v, const std::vector<double>& levels) {
  const int j = interval_of(v, levels);
  return std::max(0.0, (levels[j + 1] - v) * (v - levels[j]));
}

// Total stochastic-rounding variance of the data under a sorted codebook covering it.
inline double total_variance(const std::vector<double>& data, const std::vector<double>& levels) {
  double total = 0.0;
  for (double x : data) total += rounding_variance(x, levels);
  return total;
}

}  // namespace zipml::reference
