// The data format and the fixed-point arithmetic of the accelerator: one definition, used by the
// kernel (sgd_kernel.h), the bit-exact reference (fpga/reference) and the host (fpga/host).
//
// Data (ZipML, arXiv 1611.05402, Section 4; the FCCM'17 design of Kara et al., Section 10 of
// docs/zipml-notes.md). A row is stored in consecutive 512-bit lines:
//   * b-bit designs (b = 1, 2, 4, 8): feature k takes the 2b-bit slot k of the row, LSB-first: the
//     code of sample 0 in its low b bits, the code of sample 1 (independent) in its high b bits.
//     Codes are those of the project's quantizer (kernels/common/quantize.h): uniform grid of
//     K = 2^b levels on [-1, 1], code c stands for (2c - (K - 1)) / (K - 1), so the lane works
//     with the odd integer t = 2c - (K - 1) and the constant denominator D = K - 1.
//   * the float design: feature k is the float32 in 32-bit slot k; the lane converts it to Q1.23
//     fixed point (t = round(u 2^23), D = 2^23). One copy: both factors of the gradient use it.
//   * the label, int32 in Q8.23, takes the top 32 bits (slot 15 of 32 bits) of the row's last
//     line; the slots between the last feature and the label are zero and are never read.
//
// Arithmetic. Model, intercept, labels and residuals are int32 in Q8.23 (kFrac = 23). For a row
// with terms t1 (sample 0), t2 (sample 1) and label b, with the model (x, x0) read at the start of
// the mini-batch:
//   z = floor(sum_k x_k t1_k / D) + x0      b-bit designs: exact int64 sum, in any order
//   z = sum_k asr(x_k t1_k, 23) + x0         float design: each product rounded to Q8.23 before the
//                                            adder tree (as ZipML's float design), so the sum of up
//                                            to 8192 products cannot overflow
//   e = z - b (least squares, LS-SVM);  2 (z - b) if b z < 1 else 0 (L2-SVM, b = +-1);
//       sigmoid_lut(z) - [b > 0] (logistic, b = +-1)               then saturated to int32
//   h = floor(e 2^G / D)                                           (G = 23 guard bits)
//   x_k <- sat32(x_k - rnd(h t2_k / 2^(s + G)) - (r ? rnd(x_k / 2^r) : 0)),   x0 <- sat32(x0 - rnd(e / 2^s))
// with step 2^-s, ridge shift r (epoch_ridge_shift) and rnd rounding to nearest (add half, shift: a
// carry-in). So x_k moves by 2^-s e t2_k / D, the double-sampled gradient of Section 4 with the
// residual e, at the resolution 2^-23. The updates round to nearest because they accumulate: a
// floor would push every weight by half a unit per row, which at small steps stalls SGD visibly.
#pragma once
#include <cstdint>

#include "hls_compat.h"
#include "sigmoid_lut.h"

namespace zipml::fpga {

constexpr int kFrac = 23;  // fractional bits of model, labels and residuals
constexpr int32_t kOne = int32_t{1} << kFrac;
constexpr int kGuard = 23;              // extra fractional bits of the row scalar h
constexpr int kMaxShift = 63 - kGuard;  // step shifts beyond this would shift out everything
constexpr int kFloatBits = 32;          // the precision "bits" of the float baseline design

enum class Loss : uint32_t { LeastSquares = 0, LSSVM = 1, Logistic = 2, L2SVM = 3 };

inline bool valid_loss(uint32_t loss) { return loss <= 3; }

// Q1.23 fixed point of a float32 given as its bits: round(u 2^23), ties away from zero, for |u| <
// 256 (saturated beyond; NaN and infinities saturate too, the host never sends them). Integer
// operations only, as the lane's float-to-fixed converter.
inline int32_t float_to_fixed(uint32_t bits) {
  const int exponent = static_cast<int>((bits >> 23) & 0xFF);
  const int64_t significand = (bits & 0x7FFFFF) | 0x800000;  // value = significand 2^(exponent - 150)
  const int shift = exponent - 127;                          // u 2^23 = significand 2^shift
  int64_t magnitude;
  if (exponent == 0) {
    magnitude = 0;  // zero and subnormals (< 2^-126)
  } else if (shift >= 8) {
    magnitude = INT32_MAX;
  } else if (shift >= 0) {
    magnitude = significand << shift;
  } else if (shift < -24) {
    magnitude = 0;
  } else {
    magnitude = (significand + (int64_t{1} << (-shift - 1))) >> -shift;
  }
  return sat32((bits >> 31) ? -magnitude : magnitude);
}

// The per-precision format. Q = 1, 2, 4, 8 bits, or kFloatBits for the float design.
template <int Q>
struct Format {
  static_assert(Q == 1 || Q == 2 || Q == 4 || Q == 8 || Q == kFloatBits, "precision must be 1, 2, 4, 8 or 32");
  static constexpr bool kFloat = Q == kFloatBits;
  static constexpr int kBits = Q;
  static constexpr int kSlotBits = kFloat ? 32 : 2 * Q;     // bits per feature in a line
  static constexpr int kPerLine = Line::kBits / kSlotBits;  // feature slots per line
  static constexpr int kLabelSlots = 32 / kSlotBits;        // slots the label takes
  static constexpr int kSamples = kFloat ? 1 : 2;
  static constexpr int64_t kDenominator = kFloat ? int64_t{1} << 23 : (int64_t{1} << Q) - 1;

  static constexpr int64_t lines_per_row(int64_t n) { return (n + kLabelSlots + kPerLine - 1) / kPerLine; }
  static constexpr int64_t bytes_per_row(int64_t n) { return lines_per_row(n) * (Line::kBits / 8); }

  // The term t of sample `sample` (0: dot product, 1: gradient) of a code or float slot.
  // The lane's product and the divisor of the row's sum of products (see the top of the file).
  static constexpr int64_t kDotDivisor = kFloat ? 1 : kDenominator;
  static int64_t lane_product(int32_t x, int32_t t) {
    const int64_t p = static_cast<int64_t>(x) * t;
    return kFloat ? asr(p, kFrac) : p;
  }

  static int32_t term_of_code(uint32_t code) {
    return static_cast<int32_t>(2 * code) - static_cast<int32_t>(kDenominator);
  }
  static int32_t term(const Line& line, int slot, int sample) {
    // (a plain if on a constant: both branches are valid for every Q, and HLS front ends that
    // predate C++17 accept it)
    if (kFloat) return float_to_fixed(line.get(32 * slot, 32));
    return term_of_code(line.get(kSlotBits * slot + Q * sample, kFloat ? 1 : Q));
  }
};

// The logistic function of a Q8.23 argument from the table of sigmoid_lut.h: 2^kSigmoidStepBits
// entries per unit on [-kSigmoidRange, kSigmoidRange), each the value at its bin's midpoint.
inline int32_t sigmoid_fixed(int64_t z) {
  int64_t i = asr(z, kFrac - kSigmoidStepBits) + kSigmoidEntries / 2;
  i = i < 0 ? 0 : i >= kSigmoidEntries ? kSigmoidEntries - 1 : i;
  return kSigmoidTable[i];
}

// The row's scalars: the residual e (Q8.23, also the intercept's gradient) and h = e 2^G / D.
struct RowScalar {
  int32_t e;
  int64_t h;
};

// dot_sum: the sum of the lane products of the row (Format::lane_product).
template <class F>
RowScalar row_scalar(int64_t dot_sum, int32_t x0, int32_t label, Loss loss) {
  const int64_t z = floor_div(dot_sum, F::kDotDivisor) + x0;
  int64_t e = 0;
  switch (loss) {
    case Loss::LeastSquares:
    case Loss::LSSVM:
      e = z - label;
      break;
    case Loss::L2SVM: {  // squared hinge max(0, 1 - b z)^2: slope 2 (z - b) inside the margin
      const bool inside = label > 0 ? z < kOne : z > -kOne;
      e = inside ? 2 * (z - label) : 0;
      break;
    }
    case Loss::Logistic:
      e = sigmoid_fixed(z) - (label > 0 ? kOne : 0);
      break;
  }
  const int32_t e32 = sat32(e);
  return RowScalar{e32, floor_div(static_cast<int64_t>(e32) * (int64_t{1} << kGuard), F::kDenominator)};
}

// One lane of the update; |h t2| <= 2^54 since |t2| <= D.
inline int32_t lane_update(int32_t x, int64_t h, int32_t t2, int shift, int ridge_shift) {
  const int64_t ridge = ridge_shift > 0 ? rshift_round(x, ridge_shift) : 0;
  return sat32(static_cast<int64_t>(x) - rshift_round(h * t2, shift + kGuard) - ridge);
}

inline int32_t intercept_update(int32_t x0, int32_t e, int shift) {
  return sat32(static_cast<int64_t>(x0) - rshift_round(e, shift));
}

// The model written after every epoch: ceil((n + 1) / 16) lines of 16 int32 words, the features'
// weights then the intercept (word n).
constexpr int64_t model_lines(int64_t n) { return (n + 1 + 15) / 16; }

// The kernel's run-time configuration (an AXI-Lite register file in hardware).
struct SgdConfig {
  uint32_t rows = 0;  // m
  uint32_t cols = 0;  // n, the features (the intercept is kept apart)
  uint32_t epochs = 1;
  uint32_t copies = 1;       // epoch e reads copy e % copies of the data
  uint32_t batch_log2 = 0;   // mini-batch of 2^batch_log2 rows
  uint32_t step_shift = 12;  // step 2^-(step_shift + (first_epoch + e) / decay_every)
  uint32_t decay_every = 0;  // 0: constant step
  uint32_t first_epoch = 0;  // the epoch number of this call's first epoch (for the decay)
  uint32_t l2_shift = 0;     // 0: no ridge; else x -= asr(x, l2_shift) every row (+1 per step halving)
  uint32_t loss = 0;         // Loss
  uint32_t fit_intercept = 1;
  uint32_t load_model = 0;  // 1: start from model_in (model_lines(n) lines), else from zero
};

inline int epoch_shift(const SgdConfig& c, uint32_t epoch) {
  return static_cast<int>(c.step_shift + (c.decay_every ? (c.first_epoch + epoch) / c.decay_every : 0));
}

// The ridge shift of an epoch: it grows with the step's shift, so the ridge keeps its ratio to the
// step (the objective stays the same while the step decays). 0: no ridge.
inline int epoch_ridge_shift(const SgdConfig& c, uint32_t epoch) {
  if (c.l2_shift == 0) return 0;
  const int s = static_cast<int>(c.l2_shift) + epoch_shift(c, epoch) - static_cast<int>(c.step_shift);
  return s > 62 ? 62 : s;
}

}  // namespace zipml::fpga
