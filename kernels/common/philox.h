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

// Word `index` of stream (seed, offset). One Philox call yields four consecutive words: counter =
// (index / 4 as 64 bits, offset as 64 bits), key = seed.
ZIPML_HD Philox4 philox_block(uint64_t seed, uint64_t offset, uint64_t block) {
  return philox4x32_10(Philox4{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32),
                                static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)}},
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

ZIPML_HD uint32_t philox_word(uint64_t seed, uint64_t offset, uint64_t index) {
  return philox_block(seed, offset, index >> 2).v[index & 3];
}

// The 16-bit draw of element `index`: half index & 1 (the low half first) of word index / 2, so that
// one Philox call serves eight elements.
ZIPML_HD uint32_t draw_of(uint32_t word, uint64_t index) { return (word >> (16 * (index & 1))) & 0xFFFFu; }

// The draw of element `index` from its Philox block, philox_block(seed, offset, index / 8).
ZIPML_HD uint32_t block_draw(const Philox4& block, uint64_t index) { return draw_of(block.v[(index >> 1) & 3], index); }

ZIPML_HD uint32_t philox_draw(uint64_t seed, uint64_t offset, uint64_t index) {
  return block_draw(philox_block(seed, offset, index >> 3), index);
}

// The tie word of element `index`: word 2^63 + index of the same stream, past every draw's word.
// Stochastic rounding reads it with probability below 2^-16 (kernel::round_up).
constexpr uint64_t kTieWords = uint64_t{1} << 63;

ZIPML_HD uint32_t philox_tie_word(uint64_t seed, uint64_t offset, uint64_t index) {
  return philox_word(seed, offset, kTieWords | index);
}

}  // namespace zipml::kernel
