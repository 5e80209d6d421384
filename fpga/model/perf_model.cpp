#include "perf_model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "../host/driver.h"

namespace zipml::fpga {

Platform harp_v1() {
  return Platform{"harp_v1", 200e6, 6.5e9,
                  "ASSUMED: 200 MHz (HARP v1's CCI user clock, inferred, not read in a timing report) and 6.5 GB/s "
                  "sustained QPI read bandwidth (recalled from ETH work on the same platform, not measured here)"};
}

Platform alveo_u250() {
  return Platform{"alveo_u250", 300e6, 16e9,
                  "ASSUMED: 300 MHz (the usual Vitis kernel clock on U250) and 16 GB/s sustained from one DDR4-2400 "
                  "channel (19.2 GB/s peak) through one 512-bit AXI port; no board here, nothing measured"};
}

std::vector<Platform> platforms() { return {harp_v1(), alveo_u250()}; }

ModelDesign model_design(int bits, int lanes) {
  const DesignInfo i = design_info(bits, lanes);
  return ModelDesign{i.bits, i.lanes, i.beats, i.per_line, i.label_slots, i.latency};
}

Prediction predict(const ModelDesign& d, const Workload& w, double bytes_per_cycle, double clock_hz) {
  if (w.rows < 1 || w.cols < 1 || w.batch < 1 || w.epochs < 1)
    throw std::invalid_argument("rows, cols, batch and epochs must be >= 1");
  Prediction p;
  const double L = d.latency;
  const int64_t R = (w.cols + d.label_slots + d.per_line - 1) / d.per_line;
  const int64_t G = R * d.beats;
  const int64_t out_lines = (w.cols + 1 + 15) / 16;
  const int64_t init_lines = std::max(out_lines, G * d.lanes / 16);
  const int64_t batches = (w.rows + w.batch - 1) / w.batch;
  p.lines_per_row = R;
  p.groups_per_row = G;
  p.bytes_per_epoch = w.rows * R * 64;

  // Memory keeps up: the dot side runs one group per clock; a mini-batch boundary waits until the
  // batch's last row has updated the first group (latency + 1 clocks); an epoch ends with that
  // row's update and the model's write-out, and the next epoch starts after it.
  const double boundary = L + G + out_lines;  // the last row's scalar, update and the write-out
  const double compute_epoch = static_cast<double>(w.rows * G) + (batches - 1) * (L + 1) + boundary;
  p.compute_cycles = init_lines + w.epochs * compute_epoch;

  // Memory limits: lines arrive every 64 / bytes_per_cycle clocks; the sync waits are hidden by the
  // 64-line input FIFO; an epoch boundary stalls the dot side for latency + 1 + G + write-out
  // clocks, of which the FIFO hides 64 lines' worth.
  const double lines = static_cast<double>(w.rows * R);
  const double rho = bytes_per_cycle > 0 ? std::min(1.0, bytes_per_cycle / 64.0) : 1.0;
  const double hidden = 64.0 / rho;
  const double memory_epoch = lines / rho + std::max(0.0, L + 1 + G + out_lines - hidden);
  p.memory_cycles = w.epochs * lines / rho + (w.epochs - 1) * std::max(0.0, L + 1 + G + out_lines - hidden) + d.beats +
                    1 + L + G + out_lines;
  p.memory_bound = p.memory_cycles > p.compute_cycles;
  p.cycles = std::max(p.compute_cycles, p.memory_cycles);
  p.epoch_cycles = std::max(compute_epoch, memory_epoch);
  if (clock_hz > 0) {
    p.epoch_seconds = p.epoch_cycles / clock_hz;
    p.samples_per_second = static_cast<double>(w.rows) / p.epoch_seconds;
  }
  return p;
}

Prediction predict(const ModelDesign& d, const Workload& w, const Platform& p) {
  return predict(d, w, p.bytes_per_cycle(), p.clock_hz);
}

}  // namespace zipml::fpga
