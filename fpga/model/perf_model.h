// The performance model of the accelerator from first principles: clocks of a kernel call from the
// shape of the data, the design (bits, lanes, latency) and the platform (clock, memory bandwidth).
// It is the closed form of the kernel's schedule (fpga/hls/sgd_kernel.h), tested against the
// clocks C simulation counts: equal when memory keeps up, within 1% when memory limits.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace zipml::fpga {

struct Platform {
  std::string name;
  double clock_hz = 0;   // kernel clock
  double bandwidth = 0;  // sustained read bandwidth of the data, bytes per second
  std::string source;    // what the figures rest on: every one is an assumption unless measured
  double bytes_per_cycle() const { return bandwidth / clock_hz; }
};

// The paper's platform: Intel Xeon+FPGA (HARP v1), Stratix V reading the Xeon's memory over QPI.
Platform harp_v1();
// A current data-centre card: AMD Alveo U250 class, one 512-bit AXI port on one DDR4 channel.
Platform alveo_u250();
std::vector<Platform> platforms();

struct Workload {
  int64_t rows = 0, cols = 0;
  int64_t batch = 16;
  int64_t epochs = 1;
};

struct ModelDesign {  // the sizes the schedule depends on (DesignInfo of fpga/host/driver.h)
  int bits = 8, lanes = 32, beats = 1, per_line = 32, label_slots = 2, latency = 11;
};
ModelDesign model_design(int bits, int lanes = 0);

struct Prediction {
  int64_t lines_per_row = 0;    // R
  int64_t groups_per_row = 0;   // G = R x beats: clocks per row on each side
  int64_t bytes_per_epoch = 0;  // data read per epoch
  double compute_cycles = 0;    // the call's clocks if memory kept up (one line per clock)
  double memory_cycles = 0;     // the call's clocks if the schedule never waited for the dot side
  double cycles = 0;            // max of the two: the prediction
  double epoch_cycles = 0;      // one epoch in the steady state
  double epoch_seconds = 0;
  double samples_per_second = 0;
  bool memory_bound = false;
};

// bytes_per_cycle <= 0: unlimited memory (one line per clock, the port's width).
Prediction predict(const ModelDesign& d, const Workload& w, double bytes_per_cycle, double clock_hz = 0);
Prediction predict(const ModelDesign& d, const Workload& w, const Platform& p);

}  // namespace zipml::fpga
