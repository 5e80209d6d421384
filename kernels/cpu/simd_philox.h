// Philox4x32-10 (kernels/common/philox.h) over V::kLanes counters at once, for the SIMD span
// kernels (simd_span.h) and the linear solvers' AVX-512 quantizer (linear/kernels_avx512.cpp). Like
// simd_span.h, included inside a `target` region, after the definition of V (for AVX-512:
// simd_avx512.h); everything is in an anonymous namespace.
#pragma once

#include <cstdint>

#include "../common/philox.h"

namespace zipml::cpu {
namespace {

// One Philox stream (seed, offset): the round keys and the high counter words, broadcast once per span.
template <class V>
struct PhiloxStream {
  using I = typename V::I;
  I key0[10], key1[10];
  I offset_lo, offset_hi;

  void init(uint64_t seed, uint64_t offset) {
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      if (round > 0) {
        k0 += kernel::kPhiloxWeyl0;
        k1 += kernel::kPhiloxWeyl1;
      }
      key0[round] = V::set1i(k0);
      key1[round] = V::set1i(k1);
    }
    offset_lo = V::set1i(static_cast<uint32_t>(offset));
    offset_hi = V::set1i(static_cast<uint32_t>(offset >> 32));
  }

  // Words 4 * block .. 4 * (block + kBatch * kLanes) - 1 of the stream, in order: out[b][stream][q]
  // holds words (4b + q) * kLanes .. (4b + q + 1) * kLanes - 1 (V::draws splits them). Lane l of
  // batch b computes block block + b * kLanes + kLaneBlock[l], chosen so that the in-lane 4x4
  // transpose of V::transpose lands every word in place without a cross-lane shuffle. A batch of
  // two gives the out-of-order core independent rounds to interleave.
  template <int kBatch>
  void words(uint64_t block, I (*out)[2][4], int stream) const {
    I c0[kBatch], c1[kBatch], c2[kBatch], c3[kBatch];
    for (int b = 0; b < kBatch; ++b) {
      counters(block + static_cast<uint64_t>(b) * V::kLanes, c0[b], c1[b]);
      c2[b] = offset_lo;
      c3[b] = offset_hi;
    }
    const I mul0 = V::set1i(kernel::kPhiloxMul0), mul1 = V::set1i(kernel::kPhiloxMul1);
    for (int round = 0; round < 10; ++round) {
      for (int b = 0; b < kBatch; ++b) {
        I hi0, lo0, hi1, lo1;
        V::mulhilo(c0[b], mul0, hi0, lo0);
        V::mulhilo(c2[b], mul1, hi1, lo1);
        c0[b] = V::xor3(hi1, c1[b], key0[round]);
        c1[b] = lo1;
        c2[b] = V::xor3(hi0, c3[b], key1[round]);
        c3[b] = lo0;
      }
    }
    for (int b = 0; b < kBatch; ++b) V::transpose(c0[b], c1[b], c2[b], c3[b], out[b][stream]);
  }

 private:
  // The low counter words of blocks block + kLaneBlock[l], and the high ones.
  static void counters(uint64_t block, I& lo, I& hi) {
    if (static_cast<uint32_t>(block) <= UINT32_MAX - (V::kLanes - 1)) {
      lo = V::addi(V::set1i(static_cast<uint32_t>(block)), V::loadi(V::kLaneBlock));
      hi = V::set1i(static_cast<uint32_t>(block >> 32));
      return;
    }
    alignas(64) uint32_t low[V::kLanes], high[V::kLanes];  // the low word wraps inside this vector
    for (int l = 0; l < V::kLanes; ++l) {
      const uint64_t b = block + V::kLaneBlock[l];
      low[l] = static_cast<uint32_t>(b);
      high[l] = static_cast<uint32_t>(b >> 32);
    }
    lo = V::loadi(low);
    hi = V::loadi(high);
  }
};

}  // namespace
}  // namespace zipml::cpu
