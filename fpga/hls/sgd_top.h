// The synthesis top functions: one design, hence one bitstream, per precision (as in ZipML's
// FCCM'17 prototype). Lanes: 16 (float), 32 (8 bits), 64 (4 bits), 128 (2 bits) consume one
// 512-bit line per clock; the 1-bit design has 128 lanes and takes two clocks per line.
#pragma once
#include "format.h"

namespace zipml::fpga {

constexpr int kTopMaxFeatures = 8192;

void zipml_sgd_f32(const Line* data, const Line* model_in, Line* model_out, SgdConfig cfg);
void zipml_sgd_q8(const Line* data, const Line* model_in, Line* model_out, SgdConfig cfg);
void zipml_sgd_q4(const Line* data, const Line* model_in, Line* model_out, SgdConfig cfg);
void zipml_sgd_q2(const Line* data, const Line* model_in, Line* model_out, SgdConfig cfg);
void zipml_sgd_q1(const Line* data, const Line* model_in, Line* model_out, SgdConfig cfg);

}  // namespace zipml::fpga
