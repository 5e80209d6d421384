// What the kernel needs from an HLS tool, written so that plain g++ simulates it: pragmas behind a
// macro, a 512-bit memory line, a bounded FIFO, and integer helpers whose rounding is spelled out.
// No proprietary header (ap_int.h, hls_stream.h) is included: the kernel is one process with its
// FIFOs as on-chip ring buffers, and the line is an array of 64-bit words, which Vitis HLS
// aggregates into one 512-bit AXI word.
#pragma once
#include <cstdint>

#ifndef __SYNTHESIS__
#include <stdexcept>
#include <string>
#endif

// #pragma HLS ... from inside macros and templates. g++ ignores the HLS pragmas
// (-Wno-unknown-pragmas).
#define ZIPML_PRAGMA(x) _Pragma(#x)

namespace zipml::fpga {

// The memory word: 512 bits, 16 slots of 32 bits, bit i of the line is bit i % 64 of word i / 64.
struct Line {
  static constexpr int kBits = 512;
  static constexpr int kWords = 8;
  uint64_t word[kWords];

  // Field of `width` <= 32 bits starting at bit `lo`; fields never straddle a 64-bit word
  // (every layout here uses widths that divide 64 at aligned offsets).
  uint32_t get(int lo, int width) const {
    const uint64_t mask = width == 32 ? 0xFFFFFFFFull : ((uint64_t{1} << width) - 1);
    return static_cast<uint32_t>((word[lo >> 6] >> (lo & 63)) & mask);
  }
  void set(int lo, int width, uint32_t value) {
    const uint64_t mask = (width == 32 ? 0xFFFFFFFFull : ((uint64_t{1} << width) - 1)) << (lo & 63);
    word[lo >> 6] = (word[lo >> 6] & ~mask) | ((static_cast<uint64_t>(value) << (lo & 63)) & mask);
  }
  uint32_t slot32(int i) const { return get(32 * i, 32); }
  void set_slot32(int i, uint32_t v) { set(32 * i, 32, v); }
};

#ifndef __SYNTHESIS__
// C simulation fails loudly where hardware would deadlock or lose data.
struct SimulationError : std::logic_error {
  using std::logic_error::logic_error;
};
#define ZIPML_SIM_CHECK(cond, msg)                          \
  do {                                                      \
    if (!(cond)) throw ::zipml::fpga::SimulationError(msg); \
  } while (0)
#else
#define ZIPML_SIM_CHECK(cond, msg) \
  do {                             \
  } while (0)
#endif

// A bounded FIFO of DEPTH entries (an on-chip ring buffer). Reading it empty or writing it full is
// a design error: C simulation throws, where an HLS stream would only warn. `peak` records the
// largest occupancy, so the depth can be sized from simulation.
template <class T, int DEPTH>
class Fifo {
 public:
  static constexpr int kDepth = DEPTH;
  bool empty() const { return count_ == 0; }
  bool full() const { return count_ == DEPTH; }
  int count() const { return count_; }
  int peak() const { return peak_; }
  const T& front() const {
    ZIPML_SIM_CHECK(count_ > 0, "FIFO read while empty");
    return buf_[head_];
  }
  T read() {
    ZIPML_SIM_CHECK(count_ > 0, "FIFO read while empty");
    const T v = buf_[head_];
    head_ = head_ + 1 == DEPTH ? 0 : head_ + 1;
    --count_;
    return v;
  }
  void write(const T& v) {
    ZIPML_SIM_CHECK(count_ < DEPTH, "FIFO write while full");
    int tail = head_ + count_;
    if (tail >= DEPTH) tail -= DEPTH;
    buf_[tail] = v;
    ++count_;
    if (count_ > peak_) peak_ = count_;
  }

 private:
  T buf_[DEPTH];
  int head_ = 0, count_ = 0, peak_ = 0;
};

// Integer helpers of the fixed-point arithmetic. Right shifts of negative numbers are arithmetic
// (C++20 defines it; GCC, Clang and the HLS front ends always did): asr rounds toward -infinity.
inline int64_t asr(int64_t x, int s) { return x >> s; }

// x / 2^s rounded to nearest, ties toward +infinity: add half, then shift (a carry-in in hardware).
inline int64_t rshift_round(int64_t x, int s) { return s > 0 ? (x + (int64_t{1} << (s - 1))) >> s : x; }

// Floor division by a positive constant (rounds toward -infinity, as asr does for powers of two).
// In hardware a division by a compile-time constant is a multiply by its reciprocal.
inline int64_t floor_div(int64_t a, int64_t d) {
  const int64_t q = a / d;
  return (a % d != 0 && a < 0) ? q - 1 : q;
}

inline int32_t sat32(int64_t x) {
  return x > INT32_MAX ? INT32_MAX : x < INT32_MIN ? INT32_MIN : static_cast<int32_t>(x);
}

constexpr int ceil_log2(int64_t x) {
  int b = 0;
  while ((int64_t{1} << b) < x) ++b;
  return b;
}

}  // namespace zipml::fpga
