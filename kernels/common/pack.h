// Bit packing of b-bit codes (1 <= b <= 8) into bytes, least significant bits first: code i
// occupies bits [i*b, (i+1)*b) of the little-endian bit stream, so 1, 2, 4 and 8-bit codes never
// straddle a byte and the other widths do. ceil(n*b/8) bytes hold n codes; unused high bits of the
// last byte are zero.
#pragma once
#include <cstdint>

#include "macros.h"

namespace zipml::kernel {

ZIPML_HD int64_t packed_bytes(int64_t numel, int bits) { return (numel * bits + 7) / 8; }

// Byte `byte_index` of the packed stream, assembled from the codes that overlap it.
ZIPML_HD uint8_t pack_byte(const uint8_t* codes, int64_t numel, int bits, int64_t byte_index) {
  const int64_t first_bit = byte_index * 8;
  int64_t i = first_bit / bits;
  unsigned acc = 0;
  for (; i < numel && i * bits < first_bit + 8; ++i) {
    const int64_t shift = i * bits - first_bit;  // may be negative for a straddling code
    const unsigned code = codes[i];
    acc |= shift >= 0 ? code << shift : code >> -shift;
  }
  return static_cast<uint8_t>(acc);
}

// Code `index` read back from a packed stream.
ZIPML_HD uint8_t unpack_code(const uint8_t* packed, int bits, int64_t index) {
  const int64_t bit = index * bits;
  const int64_t byte = bit >> 3;
  const int shift = static_cast<int>(bit & 7);
  unsigned word = packed[byte];
  if (shift + bits > 8) word |= static_cast<unsigned>(packed[byte + 1]) << 8;
  return static_cast<uint8_t>((word >> shift) & ((1u << bits) - 1u));
}

}  // namespace zipml::kernel
