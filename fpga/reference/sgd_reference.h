// The bit-exact reference of the accelerator: plain mini-batch SGD in the fixed-point arithmetic of
// fpga/hls/format.h, row after row, with no lines, FIFOs or clocks. The kernel's model after every
// epoch must equal it bit for bit (fpga/tests).
#pragma once
#include <cstdint>
#include <vector>

#include "../hls/format.h"

namespace zipml::fpga {

// The training data in the simplest form the accelerator's data derive from.
struct TrainingData {
  int bits = 8;  // 1, 2, 4, 8, or kFloatBits
  int64_t rows = 0, cols = 0;
  int copies = 1;                 // independent quantizations (1 for the float design)
  std::vector<uint8_t> codes[2];  // b-bit: copies x rows x cols codes of sample 0 and of sample 1
  std::vector<float> values;      // float design: rows x cols, in [-1, 1]
  std::vector<int32_t> labels;    // rows, Q8.23

  // The terms t (format.h) of sample `sample` of value (copy, row, col).
  int32_t term(int copy, int64_t row, int64_t col, int sample) const;
};

// Throws std::invalid_argument naming the field when the data do not hold what `bits` needs.
void check_training_data(const TrainingData& data);

// The model (cols weights, then the intercept) after every epoch: epochs x (cols + 1) words.
// model_in: cols + 1 words to start from when cfg.load_model, else ignored (the model starts at 0).
std::vector<int32_t> reference_sgd(const TrainingData& data, const SgdConfig& cfg, const int32_t* model_in = nullptr);

}  // namespace zipml::fpga
