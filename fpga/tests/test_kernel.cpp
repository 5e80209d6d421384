// The kernel's C simulation against the bit-exact reference: the model after every epoch, for every
// design (precision and lanes), loss, mini-batch size, row shape and memory speed.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "fpga/host/driver.h"

using namespace zipml::fpga;

namespace {

// Data whose labels suit the loss: a noisy linear target for least squares, its sign (+-1) for
// the classifiers; two quantized copies (one for the float design).
TrainingData problem(int bits, int64_t rows, int64_t cols, Loss loss, uint32_t seed, int copies = 2) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::normal_distribution<double> noise(0.0, 0.1);
  std::vector<float> x(static_cast<size_t>(rows * cols)), w(static_cast<size_t>(cols));
  for (float& v : w) v = u(g);
  for (float& v : x) v = u(g);
  TrainingData d;
  d.bits = bits;
  d.rows = rows;
  d.cols = cols;
  d.copies = bits == kFloatBits ? 1 : copies;
  d.labels.resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double z = noise(g);
    for (int64_t k = 0; k < cols; ++k) z += x[r * cols + k] * w[k];
    const bool classifier = loss != Loss::LeastSquares;
    d.labels[r] = to_fixed(classifier ? (z > 0 ? 1.0 : -1.0) : 0.5 * z / std::sqrt(static_cast<double>(cols)));
  }
  if (bits == kFloatBits)
    d.values = x;
  else
    quantize_double_sampled(x.data(), rows, cols, bits, d.copies, seed, 0, d.codes);
  return d;
}

SgdConfig config_for(const TrainingData& d, Loss loss, int batch_log2, int epochs, int step_shift) {
  SgdConfig c;
  c.rows = static_cast<uint32_t>(d.rows);
  c.cols = static_cast<uint32_t>(d.cols);
  c.copies = static_cast<uint32_t>(d.copies);
  c.epochs = static_cast<uint32_t>(epochs);
  c.batch_log2 = static_cast<uint32_t>(batch_log2);
  c.step_shift = static_cast<uint32_t>(step_shift);
  c.loss = static_cast<uint32_t>(loss);
  return c;
}

const char* loss_name(Loss l) {
  switch (l) {
    case Loss::LeastSquares:
      return "least_squares";
    case Loss::LSSVM:
      return "lssvm";
    case Loss::Logistic:
      return "logistic";
    case Loss::L2SVM:
      return "l2svm";
  }
  return "?";
}

class KernelMatchesReference : public ::testing::TestWithParam<std::tuple<std::tuple<int, int>, Loss>> {};

}  // namespace

// Row shapes: one feature; a line exactly filled by features and label; one feature more (the label
// alone on a second line); rows over several lines whose last line is partly filled.
TEST_P(KernelMatchesReference, EveryEpochBitForBit) {
  const auto [design_params, loss] = GetParam();
  const auto [bits, lanes] = design_params;
  const DesignInfo design = design_info(bits, lanes);
  const int64_t fill = design.per_line - design.label_slots;
  int runs = 0;
  for (int64_t cols : std::vector<int64_t>{1, fill, fill + 1, 2 * int64_t{design.per_line} + 3, 301})
    for (int batch_log2 : {0, 1, 3, 6}) {
      const uint32_t seed = static_cast<uint32_t>(cols * 131 + batch_log2 * 7 + bits);
      const TrainingData d = problem(bits, 45, cols, loss, seed);
      const SgdConfig cfg = config_for(d, loss, batch_log2, 3, 4 + batch_log2);
      const std::vector<int32_t> want = reference_sgd(d, cfg);
      const std::vector<Line> lines = pack_lines(d);
      for (double bytes_per_cycle : {0.0, 13.3}) {  // unlimited memory, and memory-bound
        const KernelRun run = run_kernel(bits, lanes, lines, cfg, nullptr, MemoryModel{bytes_per_cycle});
        ASSERT_EQ(run.models, want) << "cols " << cols << " batch " << (1 << batch_log2) << " memory "
                                    << bytes_per_cycle;
        ASSERT_EQ(run.stats.lines_read, 3 * d.rows * lines_per_row(bits, cols));
        ++runs;
      }
    }
  EXPECT_EQ(runs, 40);
}

std::string design_name(const ::testing::TestParamInfo<KernelMatchesReference::ParamType>& info) {
  const std::tuple<int, int> design = std::get<0>(info.param);
  const int bits = std::get<0>(design);
  return (bits == kFloatBits ? std::string("float") : "q" + std::to_string(bits)) + "_lanes" +
         std::to_string(std::get<1>(design)) + "_" + loss_name(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Designs, KernelMatchesReference,
                         ::testing::Combine(::testing::Values(std::make_tuple(kFloatBits, 16), std::make_tuple(8, 32),
                                                              std::make_tuple(4, 64), std::make_tuple(2, 128),
                                                              std::make_tuple(1, 128), std::make_tuple(1, 256)),
                                            ::testing::Values(Loss::LeastSquares, Loss::LSSVM, Loss::Logistic,
                                                              Loss::L2SVM)),
                         design_name);

TEST(Kernel, BatchSemanticsMatter) {
  // The reference depends on the batch size (so the equality above tests the snapshot), and a
  // batch of one is plain SGD: every row reads the previous row's update.
  const TrainingData d = problem(4, 40, 20, Loss::LeastSquares, 5);
  EXPECT_NE(reference_sgd(d, config_for(d, Loss::LeastSquares, 0, 1, 3)),
            reference_sgd(d, config_for(d, Loss::LeastSquares, 2, 1, 3)));
}

TEST(Kernel, OptionsMatchTheReference) {
  for (int bits : {kFloatBits, 8, 2}) {
    const TrainingData d = problem(bits, 53, 40, Loss::LeastSquares, 17, 3);
    const std::vector<Line> lines = pack_lines(d);
    SgdConfig cfg = config_for(d, Loss::LeastSquares, 2, 5, 3);
    cfg.decay_every = 2;  // the step halves every 2 epochs
    cfg.l2_shift = 9;     // ridge
    EXPECT_EQ(run_kernel(bits, 0, lines, cfg).models, reference_sgd(d, cfg)) << bits;
    cfg.fit_intercept = 0;
    EXPECT_EQ(run_kernel(bits, 0, lines, cfg).models, reference_sgd(d, cfg)) << bits;
    cfg.step_shift = 0;  // huge steps: the model saturates, identically
    EXPECT_EQ(run_kernel(bits, 0, lines, cfg).models, reference_sgd(d, cfg)) << bits;
  }
}

TEST(Kernel, ResumingFromAModelEqualsOneCall) {
  // Two calls of 2 epochs (the second loads the first's model) equal one call of 4 epochs, when the
  // copies line up: the host's per-epoch mode for fresh samples relies on it.
  const TrainingData d = problem(4, 29, 70, Loss::Logistic, 23, 1);
  const std::vector<Line> lines = pack_lines(d);
  SgdConfig all = config_for(d, Loss::Logistic, 1, 4, 2);
  all.decay_every = 1;
  const KernelRun whole = run_kernel(4, 0, lines, all);
  SgdConfig first = all, second = all;
  first.epochs = second.epochs = 2;
  second.first_epoch = 2;
  second.load_model = 1;
  const KernelRun a = run_kernel(4, 0, lines, first);
  const std::vector<int32_t> model(a.models.end() - 71, a.models.end());
  const KernelRun b = run_kernel(4, 0, lines, second, model.data());
  std::vector<int32_t> joined = a.models;
  joined.insert(joined.end(), b.models.begin(), b.models.end());
  EXPECT_EQ(joined, whole.models);
  EXPECT_EQ(b.models, reference_sgd(d, second, model.data()));
}

TEST(Kernel, WideRowsAndLargeBatches) {
  // Rows of thousands of features (gisette-like) and a batch larger than the data.
  for (int bits : {kFloatBits, 1}) {
    const TrainingData d = problem(bits, 9, 2500, Loss::L2SVM, 31);
    const SgdConfig cfg = config_for(d, Loss::L2SVM, 4, 2, 8);
    EXPECT_EQ(run_kernel(bits, 0, pack_lines(d), cfg, nullptr, MemoryModel{32.5}).models, reference_sgd(d, cfg))
        << bits;
  }
}

TEST(Kernel, RejectsBadConfigurations) {
  const TrainingData d = problem(8, 10, 10, Loss::LeastSquares, 1);
  const std::vector<Line> lines = pack_lines(d);
  SgdConfig cfg = config_for(d, Loss::LeastSquares, 0, 1, 4);
  EXPECT_THROW(run_kernel(3, 0, lines, cfg), std::invalid_argument);
  EXPECT_THROW(run_kernel(8, 64, lines, cfg), std::invalid_argument);
  SgdConfig wide = cfg;
  wide.cols = kMaxFeatures + 1;
  EXPECT_THROW(run_kernel(8, 0, lines, wide), std::invalid_argument);
  SgdConfig more = cfg;
  more.rows = 11;  // more rows than the data hold
  EXPECT_THROW(run_kernel(8, 0, lines, more), std::invalid_argument);
  SgdConfig steep = cfg;
  steep.step_shift = 41;
  EXPECT_THROW(run_kernel(8, 0, lines, steep), std::invalid_argument);
  SgdConfig bad_loss = cfg;
  bad_loss.loss = 7;
  EXPECT_THROW(run_kernel(8, 0, lines, bad_loss), std::invalid_argument);
}
