// The inner loops of a mini-batch step, in instruction-set variants chosen at run time (scalar,
// AVX2, AVX-512 with VNNI). Every variant computes exactly the same bits: the float loops follow
// one fixed order of operations (32 accumulation lanes, a fixed reduction tree, no fused
// multiply-add), and the integer loops compute exact integer sums.
//
// The integer loops are the low-precision path of ZipML (arXiv 1611.05402, Sections 4 and 10):
// with the uniform grid a code c of a b-bit value stands for (2c - (K-1)) / (K-1), K = 2^b, so
// both halves of a double-sampled step reduce to small integer products,
//   forward   sum_j c1[k,j] * m[j]        (codes of sample 1 times the 8-bit model codes),
//   gradient  sum_k c2[k,j] * t[k]        (codes of sample 2 times the 8-bit residual codes),
// each an unsigned-by-signed byte product that VPDPBUSD sums four at a time. Both read the codes
// straight from the store's row records (linear/store.h); the gradient transposes groups of four
// rows in registers so that VPDPBUSD's four-product sums run over rows.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "../kernels/common/quantize.h"

namespace zipml::linear {

constexpr int kFloatLanes = 32;

// The symmetric grid of 2^bits - 1 levels on [-1, 1], zero included, on which the model, the
// gradient and the residuals are quantized (end to end, Section 4.6): level i stands for the integer
// i - (2^(bits-1) - 1), so 8-bit levels are signed bytes.
inline kernel::Levels symmetric_grid(int bits) { return kernel::Levels{nullptr, (1 << bits) - 1}; }
inline int symmetric_half(int bits) { return (1 << (bits - 1)) - 1; }

struct Kernels {
  const char* name;
  // sum_j a[j] * w[j]: lane l accumulates the products j = l (mod 32) in order, then lanes are
  // summed pairwise (l + 16, then + 8, + 4, + 2, + 1).
  float (*dot)(const float* a, const float* w, int64_t n);
  // g[j] = sum_k e[k] * rows[k][j] for j < n, k in order.
  void (*gemv_t)(const float* const* rows, const float* e, int64_t nrows, int64_t n, float* g);
  // sum over features [c0, c1) of code(j) * m[j], code = interval index + round-up bit of one
  // sample of a store record (index plane `index`, round-up plane `up`, uniform b-bit levels).
  // m holds zeros from c1 up to the next multiple of 64.
  int64_t (*int_dot)(const uint8_t* index, const uint8_t* up, const int8_t* m, int64_t c0, int64_t c1, int bits);
  // G[j - c0] = sum_k code_k(j) * t[k] for features [c0, c1) over nrows rows (a multiple of 4; a
  // padding row has t = 0). G has room for c1 - c0 rounded up to 64 values; c0 is a multiple of 64.
  void (*int_gemv_t)(const uint8_t* const* index, const uint8_t* const* up, const int8_t* t, int64_t nrows, int64_t c0,
                     int64_t c1, int bits, int32_t* G);
  // Stochastic rounding of v[j] / scale on symmetric_grid(bits) for j in [begin, end): the core's
  // kernel::quantize_code with element j of stream (seed, offset). Writes the values L[code] * scale
  // to out_f and/or, for bits <= 8, the integer levels to out_i (either may be null). Returns the
  // sum of the integer levels.
  int64_t (*quantize_symmetric)(const float* v, int64_t begin, int64_t end, float scale, int bits, uint64_t seed,
                                uint64_t offset, float* out_f, int8_t* out_i);
  // max |v[j]| over [begin, end) (0 for an empty range).
  float (*max_abs)(const float* v, int64_t begin, int64_t end);
  // out[j - c0] = L[code(j)] for features [c0, c1) of one record with uniform b-bit levels (b in
  // 1, 2, 4, 8; c0 a multiple of 64): Levels::at of the code, as the store decodes it.
  void (*decode_uniform)(const uint8_t* index, const uint8_t* up, int64_t c0, int64_t c1, int bits, float* out);
  // out[i] = kernel::philox_draw of element first + i in stream (seed, offset), i < n.
  void (*philox_draws)(uint64_t seed, uint64_t offset, uint64_t first, int64_t n, uint16_t* out);
};

const Kernels& scalar_kernels();
void decode_uniform_scalar(const uint8_t* index, const uint8_t* up, int64_t c0, int64_t c1, int bits, float* out);
void philox_draws_scalar(uint64_t seed, uint64_t offset, uint64_t first, int64_t n, uint16_t* out);
int64_t quantize_symmetric_scalar(const float* v, int64_t begin, int64_t end, float scale, int bits, uint64_t seed,
                                  uint64_t offset, float* out_f, int8_t* out_i);
const Kernels* avx2_kernels();    // nullptr when the build or the processor lacks AVX2
const Kernels* avx512_kernels();  // needs AVX-512 F, BW, VL, VNNI and VBMI

// The variant in use: the fastest the processor runs, unless ZIPML_LINEAR_ISA or set_isa chose one.
const Kernels& active_kernels();
void set_isa(const std::string& name);  // "scalar", "avx2", "avx512", or "" for the automatic choice
std::vector<std::string> available_isas();

}  // namespace zipml::linear
