#include "sgd_top.h"

#include "sgd_kernel.h"

// AXI interfaces: the data and the models through two m_axi bundles (512-bit words), the
// configuration and start/done through AXI-Lite. The depths are for co-simulation only.
// clang-format off
#define ZIPML_SGD_TOP(name, Q, LANES)                                                                            \
  void name(const Line* data, const Line* model_in, Line* model_out, SgdConfig cfg) {                          \
    ZIPML_PRAGMA(HLS INTERFACE m_axi port = data offset = slave bundle = gmem0 max_read_burst_length = 64 \
                 num_read_outstanding = 32 depth = 4096)                                                     \
    ZIPML_PRAGMA(HLS INTERFACE m_axi port = model_in offset = slave bundle = gmem1 depth = 1024)                \
    ZIPML_PRAGMA(HLS INTERFACE m_axi port = model_out offset = slave bundle = gmem1 depth = 1024)               \
    ZIPML_PRAGMA(HLS INTERFACE s_axilite port = cfg)                                                            \
    ZIPML_PRAGMA(HLS INTERFACE s_axilite port = return)                                                         \
    sgd_kernel<Q, LANES, kZipmlTopMaxFeatures>(data, model_in, model_out, cfg, MemoryModel{}, nullptr);          \
  }
// clang-format on

using namespace zipml::fpga;

ZIPML_SGD_TOP(zipml_sgd_f32, kFloatBits, 16)
ZIPML_SGD_TOP(zipml_sgd_q8, 8, 32)
ZIPML_SGD_TOP(zipml_sgd_q4, 4, 64)
ZIPML_SGD_TOP(zipml_sgd_q2, 2, 128)
ZIPML_SGD_TOP(zipml_sgd_q1, 1, 128)
