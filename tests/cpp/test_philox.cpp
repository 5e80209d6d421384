// Philox4x32-10 (kernels/common/philox.h) against the Random123 known-answer vectors and an
// independent reference, and the stream layout that keys every element's random word.
#include <gtest/gtest.h>

#include <random>

#include "kernels/common/philox.h"
#include "reference.h"

namespace {

using zipml::kernel::Philox4;
using Words = std::array<uint32_t, 4>;

Words philox10(Words ctr, std::array<uint32_t, 2> key) {
  const Philox4 out = zipml::kernel::philox4x32_10(Philox4{{ctr[0], ctr[1], ctr[2], ctr[3]}}, key[0], key[1]);
  return {out.v[0], out.v[1], out.v[2], out.v[3]};
}

struct KnownAnswer {
  Words ctr;
  std::array<uint32_t, 2> key;
  Words expected;
};

// Random123 kat_vectors, philox4x32 with 10 rounds.
const KnownAnswer kRandom123[] = {
    {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};

TEST(Philox, MatchesRandom123KnownAnswers) {
  for (const KnownAnswer& k : kRandom123) {
    EXPECT_EQ(philox10(k.ctr, k.key), k.expected);
    EXPECT_EQ(zipml::reference::philox4x32(k.ctr, k.key, 10), k.expected);
  }
}

// The known answers have power: the same function with one round fewer or more misses them all.
TEST(Philox, WrongRoundCountMissesKnownAnswers) {
  for (const KnownAnswer& k : kRandom123) {
    EXPECT_NE(zipml::reference::philox4x32(k.ctr, k.key, 9), k.expected);
    EXPECT_NE(zipml::reference::philox4x32(k.ctr, k.key, 11), k.expected);
  }
}

TEST(Philox, MatchesReferenceOnRandomCountersAndKeys) {
  std::mt19937 gen(20170611);
  for (int trial = 0; trial < 2000; ++trial) {
    const Words ctr{uint32_t(gen()), uint32_t(gen()), uint32_t(gen()), uint32_t(gen())};
    const std::array<uint32_t, 2> key{uint32_t(gen()), uint32_t(gen())};
    ASSERT_EQ(philox10(ctr, key), zipml::reference::philox4x32(ctr, key, 10)) << "trial " << trial;
  }
}

// Element i of stream (seed, offset) takes word i % 4 of the block with counter
// (i / 4 as two 32-bit words, offset as two 32-bit words) and key (seed low, seed high).
TEST(Philox, StreamLayoutKeysEachElement) {
  const uint64_t seeds[] = {0, 1, 0x0123456789abcdefULL, ~0ULL};
  const uint64_t offsets[] = {0, 1, 0xfedcba9876543210ULL};
  const uint64_t indices[] = {0, 1, 2, 3, 4, 7, 1000003, (1ULL << 34) + 5, ~0ULL};
  for (uint64_t seed : seeds)
    for (uint64_t offset : offsets)
      for (uint64_t i : indices) {
        const uint64_t block = i / 4;
        const Words want = zipml::reference::philox4x32(
            {uint32_t(block), uint32_t(block >> 32), uint32_t(offset), uint32_t(offset >> 32)},
            {uint32_t(seed), uint32_t(seed >> 32)}, 10);
        EXPECT_EQ(zipml::kernel::philox_word(seed, offset, i), want[i % 4]) << seed << " " << offset << " " << i;
      }
}

TEST(Philox, StreamsDifferBySeedAndOffset) {
  int same_seed = 0, same_offset = 0;
  for (uint64_t i = 0; i < 4096; ++i) {
    same_seed += zipml::kernel::philox_word(7, 0, i) == zipml::kernel::philox_word(8, 0, i);
    same_offset += zipml::kernel::philox_word(7, 0, i) == zipml::kernel::philox_word(7, 1, i);
  }
  // Independent 32-bit words collide with probability 2^-32 each.
  EXPECT_LE(same_seed, 1);
  EXPECT_LE(same_offset, 1);
}

// Element i draws the low (i even) or high (i odd) 16 bits of word i / 2, and its tie word is word
// 2^63 + i: for i < 2^63 the two never share a Philox block.
TEST(Philox, DrawsAndTieWordsOfEachElement) {
  const uint64_t indices[] = {0, 1, 2, 7, 8, 1000003, (1ULL << 34) + 5, (1ULL << 63) - 1};
  const uint64_t seeds[] = {0, 0x0123456789abcdefULL}, offsets[] = {0, 0xfedcba9876543210ULL};
  for (uint64_t seed : seeds)
    for (uint64_t offset : offsets)
      for (uint64_t i : indices) {
        auto word = [&](uint64_t w) {
          const uint64_t block = w / 4;
          return zipml::reference::philox4x32(
              {uint32_t(block), uint32_t(block >> 32), uint32_t(offset), uint32_t(offset >> 32)},
              {uint32_t(seed), uint32_t(seed >> 32)}, 10)[w % 4];
        };
        EXPECT_EQ(zipml::kernel::philox_draw(seed, offset, i), (word(i / 2) >> (i % 2 ? 16 : 0)) & 0xFFFFu) << i;
        EXPECT_EQ(zipml::kernel::philox_tie_word(seed, offset, i), word((1ULL << 63) + i)) << i;
      }
}

}  // namespace
