// Philox4x32-10, the counter-based generator of Salmon et al., "Parallel random numbers: as easy
// as 1, 2, 3" (SC'11), as specified by Random123. A pure function of (counter, key): every element
// draws its own random word, so results do not depend on thread count or launch shape.
#pragma once
#include <cstdint>

#include "macros.h"

namespace zipml::kernel {

struct Philox4 {
  uint32_t v[4];
};

ZIPML_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Round multipliers and Weyl key increments from Random123.
constexpr uint32_t kPhiloxMul0 = 0xD2511F53u, kPhiloxMul1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxWeyl0 = 0x9E3779B9u, kPhiloxWeyl1 = 0xBB67AE85u;

// Philox4x32 with 10 rounds.
ZIPML_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxWeyl0;
      k1 += kPhiloxWeyl1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kPhiloxMul0, ctr.v[0], hi0, lo0);
    philox_mulhilo(kPhiloxMul1, ctr.v[2], hi1, lo1);
    ctr = Philox4{{hi1 ^ ctr.v[1] ^ k0, lo1, hi0 ^ ctr.v[3] ^ k1, lo0}};
  }
  return ctr;
}

// The random word of element `index` in stream (seed, offset). One Philox call yields the words of
// four consecutive elements: counter = (index / 4 as 64 bits, offset as 64 bits), key = seed.
ZIPML_HD Philox4 philox_block(uint64_t seed, uint64_t offset, uint64_t block) {
  return philox4x32_10(Philox4{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                                static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)}},
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

ZIPML_HD uint32_t philox_word(uint64_t seed, uint64_t offset, uint64_t index) {
  return philox_block(seed, offset, index >> 2).v[index & 3];
}

// A uniform float in [0, 1) from the top 24 bits of a word: every value k * 2^-24 is exact, so the
// comparison u < p rounds up with probability ceil(p * 2^24) / 2^24, within 2^-24 of p.
ZIPML_HD float uniform24(uint32_t word) { return static_cast<float>(word >> 8) * 5.9604644775390625e-08f; }

}  // namespace zipml::kernel
