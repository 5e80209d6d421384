// The host side of the data: the double-sampled codes of the project's quantizer, the labels in
// fixed point, and the 512-bit lines the kernel reads (the layout of fpga/hls/format.h).
#pragma once
#include <cstdint>
#include <vector>

#include "../hls/format.h"
#include "../reference/sgd_reference.h"

namespace zipml::fpga {

// Lines per row and bytes per epoch of a design (one copy of the data).
int64_t lines_per_row(int bits, int64_t cols);

// Double-sampled codes of u (rows x cols, values in [-1, 1]) on the uniform grid of 2^bits levels:
// codes[s][(c rows + r) cols + k] for copies c = 0..copies-1 of realisations first_realisation + c.
// Bit for bit the linear solvers' sample store (linear/store.h) with samples = 2: the core's
// kernel::quantize_code (kernels/common/quantize.h) at scale 1, stochastic rounding with the
// Philox4x32-10 draw of element r cols + k in stream (seed, offset = 2 realisation + s).
void quantize_double_sampled(const float* u, int64_t rows, int64_t cols, int bits, int copies, uint64_t seed,
                             int64_t first_realisation, std::vector<uint8_t> (&codes)[2]);

// The linear solvers' other sampling modes, for the same layout (both slots of a value hold one
// code): naive, one stochastic sample in stream (seed, realisation) used in both factors of the
// gradient (biased, Section 3); nearest, deterministic rounding (the rounded data's optimum).
enum class Sampling { Double, Naive, Nearest };
void quantize_codes(const float* u, int64_t rows, int64_t cols, int bits, int copies, uint64_t seed,
                    int64_t first_realisation, Sampling sampling, std::vector<uint8_t> (&codes)[2]);

// Q8.23 of a label, rounded to nearest, saturated.
int32_t to_fixed(double v);
inline double from_fixed(int64_t v) { return static_cast<double>(v) / static_cast<double>(kOne); }

// The kernel's input: copies x rows x lines_per_row lines.
std::vector<Line> pack_lines(const TrainingData& data);

// Words of the models the kernel wrote (epochs x model_lines(cols) lines) as epochs x (cols + 1).
std::vector<int32_t> unpack_models(const std::vector<Line>& lines, int64_t cols, int64_t epochs);
// The model_in lines of a model of cols + 1 words.
std::vector<Line> pack_model(const int32_t* words, int64_t cols);

}  // namespace zipml::fpga
