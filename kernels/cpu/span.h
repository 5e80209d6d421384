// The interface between the CPU drivers and their instruction-set variants. A "span" is a run of
// contiguous float32 elements that share one scale; `first` is the stream index of its first
// element (its position in the whole tensor), which keys the Philox words. Every variant computes
// exactly the bits of the scalar reference in kernels/common/quantize.h.
#pragma once
#include <cstdint>

#include "../common/quantize.h"

namespace zipml::cpu {

struct SpanParams {
  float scale;
  float inv_scale;
  kernel::Levels levels;
  int rounding;
  uint64_t seed;
  uint64_t offset;
  // Write float outputs with non-temporal stores: set by the drivers for tensors far larger than the
  // caches, where a normal store first reads the line it overwrites (a third of the traffic).
  bool stream_out = false;
};

struct SpanKernels {
  const char* name;
  // out[i] = L[code] * scale, NaN where x is not finite. The scale is valid.
  void (*fake_quantize)(const float* x, float* out, int64_t n, uint64_t first, const SpanParams& p);
  // codes[i] = code; returns false if some x was not finite (codes are then unspecified).
  bool (*quantize)(const float* x, uint8_t* codes, int64_t n, uint64_t first, const SpanParams& p);
  // Two independent stochastic samples of each value: the interval index j, and the round-up bits
  // of sample 1 (bit 0, stream `offset`) and sample 2 (bit 1, stream `offset + 1`).
  bool (*double_sample)(const float* x, uint8_t* index, uint8_t* up, int64_t n, uint64_t first,
                        const SpanParams& p);
  // The largest of m and the kernel::magnitude_bits of x[0..n).
  int32_t (*max_magnitude)(const float* x, int64_t n, int32_t m);
};

const SpanKernels& scalar_span_kernels();
// nullptr when the build or the processor lacks the instruction set.
const SpanKernels* avx2_span_kernels();
const SpanKernels* avx512_span_kernels();

// The variant in use: the fastest this processor runs, unless the environment variable
// ZIPML_CPU_ISA or set_span_isa chose one (scalar, avx2, avx512; the tests compare them all).
const SpanKernels& active_span_kernels();
void set_span_isa(const char* name);  // "" restores the automatic choice

}  // namespace zipml::cpu
