// The performance model (fpga/model) against the clocks the kernel's C simulation counts.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "fpga/host/driver.h"
#include "fpga/model/perf_model.h"

using namespace zipml::fpga;

namespace {

KernelRun simulate(int bits, int lanes, int64_t rows, int64_t cols, int batch_log2, int epochs,
                   double bytes_per_cycle) {
  std::mt19937 g(static_cast<uint32_t>(rows * 31 + cols));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  TrainingData d;
  d.bits = bits;
  d.rows = rows;
  d.cols = cols;
  d.labels.assign(rows, kOne / 4);
  std::vector<float> x(static_cast<size_t>(rows * cols));
  for (float& v : x) v = u(g);
  if (bits == kFloatBits)
    d.values = x;
  else
    quantize_double_sampled(x.data(), rows, cols, bits, 1, 3, 0, d.codes);
  SgdConfig cfg;
  cfg.rows = static_cast<uint32_t>(rows);
  cfg.cols = static_cast<uint32_t>(cols);
  cfg.epochs = static_cast<uint32_t>(epochs);
  cfg.batch_log2 = static_cast<uint32_t>(batch_log2);
  cfg.step_shift = 10;
  return run_kernel(bits, lanes, pack_lines(d), cfg, nullptr, MemoryModel{bytes_per_cycle});
}

const std::pair<int, int> kDesigns[] = {{kFloatBits, 16}, {8, 32}, {4, 64}, {2, 128}, {1, 128}, {1, 256}};

}  // namespace

TEST(Cycles, ModelEqualsSimulationWhenMemoryKeepsUp) {
  for (const auto& [bits, lanes] : kDesigns)
    for (int64_t cols : {1, 8, 12, 90, 100, 700})
      for (int batch_log2 : {0, 2, 4, 7})
        for (int64_t rows : {1, 37, 200}) {
          const KernelRun run = simulate(bits, lanes, rows, cols, batch_log2, 2, 0.0);
          const Prediction p = predict(model_design(bits, lanes), Workload{rows, cols, 1 << batch_log2, 2}, 0.0);
          ASSERT_EQ(p.cycles, static_cast<double>(run.stats.cycles))
              << "bits " << bits << " lanes " << lanes << " cols " << cols << " batch " << (1 << batch_log2) << " rows "
              << rows;
          // the steady-state epoch: the second epoch's clocks
          ASSERT_EQ(p.epoch_cycles, static_cast<double>(run.stats.epoch_end[1] - run.stats.epoch_end[0]));
          ASSERT_FALSE(p.memory_bound);
        }
}

TEST(Cycles, ModelWithinOnePercentWhenMemoryLimits) {
  // The two platforms' bytes per clock (HARP v1 32.5, U250 53.3) and slower memories. The model
  // leaves out the start-up transient (the first lines fill an empty FIFO), a few dozen clocks.
  double worst = 0.0;
  for (const auto& [bits, lanes] : kDesigns)
    for (int64_t cols : {8, 100, 700})
      for (int batch_log2 : {0, 4})
        for (double bytes_per_cycle : {8.0, 20.0, 32.5, 53.3}) {
          const KernelRun run = simulate(bits, lanes, 600, cols, batch_log2, 2, bytes_per_cycle);
          const Prediction p =
              predict(model_design(bits, lanes), Workload{600, cols, 1 << batch_log2, 2}, bytes_per_cycle);
          const double error = std::fabs(p.cycles - run.stats.cycles) / run.stats.cycles;
          worst = std::max(worst, error);
          ASSERT_LT(error, 0.01) << "bits " << bits << " lanes " << lanes << " cols " << cols << " batch "
                                 << (1 << batch_log2) << " bytes/clock " << bytes_per_cycle << ": simulated "
                                 << run.stats.cycles << ", modeled " << p.cycles;
        }
  RecordProperty("worst_relative_error", std::to_string(worst));
}

TEST(Cycles, BytesPerEpochShrinkWithThePrecision) {
  // Double sampling stores 2b bits per value: 2x, 4x, 8x, 16x less than float, less the label's
  // slots and the last line's padding (gisette's 5000 features: 313, 157, 79, 40, 20 lines).
  const Workload w{1000, 5000, 16, 1};
  const int64_t lines[] = {313, 157, 79, 40, 20};
  const int bits[] = {kFloatBits, 8, 4, 2, 1};
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(predict(model_design(bits[i]), w, 0.0).bytes_per_epoch, 1000 * lines[i] * 64) << bits[i];
    const double ideal = 32.0 / (bits[i] == kFloatBits ? 32 : 2 * bits[i]);
    EXPECT_GT(313.0 / lines[i], 0.97 * ideal);
  }
}

TEST(Cycles, HarpSpeedupOfTwoBitsOnSyntheticHundred) {
  // The paper's conditions: HARP v1 (200 MHz, 6.5 GB/s), synthetic 10,000 x 100. Float reads 7
  // lines per row, 2 bits one: memory-bound on both, the speedup per epoch is close to 7, the
  // paper's "up to 6.5x" within 15%.
  const Workload w{10000, 100, 16, 1};
  const Prediction f = predict(model_design(kFloatBits), w, harp_v1());
  const Prediction q2 = predict(model_design(2), w, harp_v1());
  EXPECT_TRUE(f.memory_bound);
  EXPECT_TRUE(q2.memory_bound);
  const double speedup = f.epoch_seconds / q2.epoch_seconds;
  EXPECT_GT(speedup, 6.5 * 0.85);
  EXPECT_LT(speedup, 6.5 * 1.15);
}
