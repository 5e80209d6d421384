// The host driver: lays out the data, runs the kernel's C simulation (the "fpga-sim" device) and
// returns the model after every epoch with the clock counts. The same calls would drive a board
// through XRT: allocate the buffers, write SgdConfig to the AXI-Lite registers, start, read back.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "../hls/sgd_kernel.h"
#include "layout.h"

namespace zipml::fpga {

// The compiled designs: (bits, lanes). Default lanes per precision: the FCCM'17 design's, one
// 512-bit line per clock except 1 bit (128 lanes, two clocks per line).
struct DesignInfo {
  int bits, lanes, beats, per_line, label_slots, latency, max_features;
};
std::vector<DesignInfo> designs();
DesignInfo design_info(int bits, int lanes = 0);  // lanes 0: the default of `bits`
constexpr int kMaxFeatures = 8192;

struct KernelRun {
  std::vector<int32_t> models;  // epochs x (cols + 1): weights then intercept, Q8.23
  KernelStats stats;
};

// One kernel call on laid-out lines (pack_lines). model_in: cols + 1 words when cfg.load_model.
KernelRun run_kernel(int bits, int lanes, const std::vector<Line>& lines, const SgdConfig& cfg,
                     const int32_t* model_in = nullptr, MemoryModel mem = {});

// Training from scaled data, as the estimators' device="fpga-sim" backend runs it.
struct TrainOptions {
  int bits = 8;                          // 1, 2, 4, 8, or 32 (the float design)
  Sampling sampling = Sampling::Double;  // of the b-bit designs' data (layout.h)
  int lanes = 0;                         // 0: the design's default
  Loss loss = Loss::LeastSquares;
  int epochs = 10;
  int batch_log2 = 4;
  int step_shift = 8;  // step 2^-step_shift on the summed mini-batch gradient
  int decay_every = 0;
  int l2_shift = 0;
  bool fit_intercept = true;
  int copies = 1;  // stored quantizations walked one per epoch; 0: a fresh one every epoch
  uint64_t seed = 0;
  double bytes_per_cycle = 0;                   // memory model of the simulation (<= 0: one line per clock)
  int64_t max_layout_bytes = int64_t{1} << 30;  // fresh samples: all epochs in one call below this
};

struct TrainResult {
  // Per epoch (epochs x (cols + 1)): weights on the scaled features, then the intercept, in the
  // units of the labels.
  std::vector<double> models;
  double label_offset = 0.0, label_scale = 1.0;  // labels sent: (y - offset) / scale in Q8.23
  std::vector<int64_t> epoch_cycles;             // clocks of every epoch (model write-out included)
  int64_t cycles = 0;                            // all kernel calls, start-up included
  int64_t calls = 0;
  int64_t bytes_per_copy = 0;  // the data one epoch reads
  KernelStats stats;           // of the last call
};

// u: rows x cols in [-1, 1] (the scaled features), y: rows labels (+-1 for the classifiers).
TrainResult train(const float* u, const float* y, int64_t rows, int64_t cols, const TrainOptions& options);

}  // namespace zipml::fpga
