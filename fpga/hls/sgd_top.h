// The synthesis top functions: one design, hence one bitstream, per precision (as in ZipML's
// FCCM'17 prototype). Lanes: 16 (float), 32 (8 bits), 64 (4 bits), 128 (2 bits) consume one
// 512-bit line per clock; the 1-bit design has 128 lanes and takes two clocks per line.
#pragma once
#include "format.h"

// Global names: Vitis HLS takes the top function by its plain name.
void zipml_sgd_f32(const zipml::fpga::Line* data, const zipml::fpga::Line* model_in, zipml::fpga::Line* model_out,
                   zipml::fpga::SgdConfig cfg);
void zipml_sgd_q8(const zipml::fpga::Line* data, const zipml::fpga::Line* model_in, zipml::fpga::Line* model_out,
                  zipml::fpga::SgdConfig cfg);
void zipml_sgd_q4(const zipml::fpga::Line* data, const zipml::fpga::Line* model_in, zipml::fpga::Line* model_out,
                  zipml::fpga::SgdConfig cfg);
void zipml_sgd_q2(const zipml::fpga::Line* data, const zipml::fpga::Line* model_in, zipml::fpga::Line* model_out,
                  zipml::fpga::SgdConfig cfg);
void zipml_sgd_q1(const zipml::fpga::Line* data, const zipml::fpga::Line* model_in, zipml::fpga::Line* model_out,
                  zipml::fpga::SgdConfig cfg);

constexpr int kZipmlTopMaxFeatures = 8192;
