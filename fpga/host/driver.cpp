#include "driver.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace zipml::fpga {

namespace {

template <int Q, int LANES>
KernelRun run_design(const std::vector<Line>& lines, const SgdConfig& cfg, const int32_t* model_in,
                     const MemoryModel& mem) {
  KernelRun run;
  const int64_t out_lines = model_lines(cfg.cols);
  std::vector<Line> in = cfg.load_model ? pack_model(model_in, cfg.cols) : std::vector<Line>(1, Line{});
  std::vector<Line> out(static_cast<size_t>(std::max<int64_t>(1, cfg.epochs * out_lines)), Line{});
  sgd_kernel<Q, LANES, kMaxFeatures>(lines.data(), in.data(), out.data(), cfg, mem, &run.stats);
  run.models = unpack_models(out, cfg.cols, cfg.epochs);
  return run;
}

template <int Q, int LANES>
DesignInfo info() {
  using D = Design<Q, LANES, kMaxFeatures>;
  return DesignInfo{Q, LANES, D::kBeats, D::F::kPerLine, D::F::kLabelSlots, D::kLatency, kMaxFeatures};
}

int default_lanes(int bits) {
  switch (bits) {
    case 1:
      return 128;
    case 2:
      return 128;
    case 4:
      return 64;
    case 8:
      return 32;
    case kFloatBits:
      return 16;
  }
  throw std::invalid_argument("bits must be one of 1, 2, 4, 8 or 32 (float), got " + std::to_string(bits));
}

std::string design_list() {
  std::string s;
  for (const DesignInfo& d : designs())
    s += (s.empty() ? "" : ", ") + std::to_string(d.bits) + "/" + std::to_string(d.lanes);
  return s;
}

}  // namespace

std::vector<DesignInfo> designs() {
  return {info<1, 128>(), info<1, 256>(), info<2, 128>(), info<4, 64>(), info<8, 32>(), info<kFloatBits, 16>()};
}

DesignInfo design_info(int bits, int lanes) {
  if (lanes == 0) lanes = default_lanes(bits);
  for (const DesignInfo& d : designs())
    if (d.bits == bits && d.lanes == lanes) return d;
  throw std::invalid_argument("no design with bits " + std::to_string(bits) + " and lanes " + std::to_string(lanes) +
                              "; compiled designs (bits/lanes): " + design_list());
}

KernelRun run_kernel(int bits, int lanes, const std::vector<Line>& lines, const SgdConfig& cfg, const int32_t* model_in,
                     MemoryModel mem) {
  const DesignInfo d = design_info(bits, lanes);
  if (cfg.cols < 1 || cfg.cols > static_cast<uint32_t>(kMaxFeatures))
    throw std::invalid_argument("cols must be from 1 to " + std::to_string(kMaxFeatures) + ", got " +
                                std::to_string(cfg.cols));
  if (cfg.rows < 1) throw std::invalid_argument("rows must be >= 1");
  if (cfg.copies < 1) throw std::invalid_argument("copies must be >= 1");
  if (!valid_loss(cfg.loss)) throw std::invalid_argument("loss must be 0..3, got " + std::to_string(cfg.loss));
  if (cfg.batch_log2 > 24) throw std::invalid_argument("batch_log2 must be <= 24");
  if (cfg.epochs > 0 && epoch_shift(cfg, cfg.epochs - 1) > kMaxShift)
    throw std::invalid_argument("the step shift must stay <= " + std::to_string(kMaxShift));
  if (cfg.l2_shift > 31) throw std::invalid_argument("l2_shift must be from 0 (off) to 31");
  if (cfg.load_model && !model_in) throw std::invalid_argument("load_model needs model_in");
  const int64_t need = static_cast<int64_t>(cfg.copies) * cfg.rows * lines_per_row(bits, cfg.cols);
  if (static_cast<int64_t>(lines.size()) < need)
    throw std::invalid_argument("the data hold " + std::to_string(lines.size()) + " lines, the configuration reads " +
                                std::to_string(need));
  switch (d.bits * 1000 + d.lanes) {
    case 1128:
      return run_design<1, 128>(lines, cfg, model_in, mem);
    case 1256:
      return run_design<1, 256>(lines, cfg, model_in, mem);
    case 2128:
      return run_design<2, 128>(lines, cfg, model_in, mem);
    case 4064:
      return run_design<4, 64>(lines, cfg, model_in, mem);
    case 8032:
      return run_design<8, 32>(lines, cfg, model_in, mem);
    default:
      return run_design<kFloatBits, 16>(lines, cfg, model_in, mem);
  }
}

TrainResult train(const float* u, const float* y, int64_t rows, int64_t cols, const TrainOptions& o) {
  design_info(o.bits, o.lanes);  // validates bits and lanes
  if (rows < 1 || cols < 1) throw std::invalid_argument("X must have at least one row and one column");
  if (o.epochs < 0) throw std::invalid_argument("epochs must be >= 0, got " + std::to_string(o.epochs));
  if (o.copies < 0) throw std::invalid_argument("copies must be >= 1, or 0 for fresh samples every epoch");
  if (o.batch_log2 < 0 || o.step_shift < 0 || o.decay_every < 0 || o.l2_shift < 0)
    throw std::invalid_argument("batch_log2, step_shift, decay_every and l2_shift must be >= 0");

  TrainResult res;
  // Labels: least squares learns (y - mean) / 2^k with |.| <= 1 (exactly the same SGD on the
  // scaled problem: every iterate is scaled by 2^-k and shifted by the mean in the intercept).
  const bool least_squares = o.loss == Loss::LeastSquares || o.loss == Loss::LSSVM;
  if (least_squares) {
    double mean = 0.0;
    for (int64_t r = 0; r < rows; ++r) mean += y[r];
    mean /= static_cast<double>(rows);
    res.label_offset = o.fit_intercept ? mean : 0.0;
    double widest = 0.0;
    for (int64_t r = 0; r < rows; ++r) widest = std::max(widest, std::fabs(y[r] - res.label_offset));
    if (!std::isfinite(widest)) throw std::invalid_argument("y holds a non-finite label");
    res.label_scale = widest > 0 ? std::exp2(std::ceil(std::log2(widest))) : 1.0;
  } else {
    for (int64_t r = 0; r < rows; ++r)
      if (y[r] != 1.0f && y[r] != -1.0f)
        throw std::invalid_argument("labels of the classifiers must be -1 or +1; row " + std::to_string(r) + " holds " +
                                    std::to_string(y[r]));
  }

  TrainingData data;
  data.bits = o.bits;
  data.rows = rows;
  data.cols = cols;
  data.labels.resize(rows);
  for (int64_t r = 0; r < rows; ++r) data.labels[r] = to_fixed((y[r] - res.label_offset) / res.label_scale);
  const bool quantized = o.bits != kFloatBits;
  const bool fresh = o.copies == 0 && quantized && o.sampling != Sampling::Nearest;
  res.bytes_per_copy = rows * lines_per_row(o.bits, cols) * (Line::kBits / 8);
  // Fresh samples: every epoch's realisation stored at once (ZipML's indices) if they fit, else
  // one kernel call per epoch, the model carried from call to call (the same bits either way).
  const bool one_call = !fresh || res.bytes_per_copy * o.epochs <= o.max_layout_bytes;
  const int copies = !quantized || o.sampling == Sampling::Nearest ? 1
                     : fresh                                       ? (one_call ? std::max(o.epochs, 1) : 1)
                                                                   : o.copies;

  SgdConfig cfg;
  cfg.rows = static_cast<uint32_t>(rows);
  cfg.cols = static_cast<uint32_t>(cols);
  cfg.copies = static_cast<uint32_t>(copies);
  cfg.batch_log2 = static_cast<uint32_t>(o.batch_log2);
  cfg.step_shift = static_cast<uint32_t>(o.step_shift);
  cfg.decay_every = static_cast<uint32_t>(o.decay_every);
  cfg.l2_shift = static_cast<uint32_t>(o.l2_shift);
  cfg.loss = static_cast<uint32_t>(o.loss);
  cfg.fit_intercept = o.fit_intercept ? 1 : 0;

  std::vector<int32_t> fixed;
  auto layout = [&](int64_t first_realisation) {
    data.copies = copies;
    if (o.bits == kFloatBits) {
      data.values.assign(u, u + rows * cols);
      for (float v : data.values)
        if (!(v >= -1.0f && v <= 1.0f)) throw std::invalid_argument("u must lie in [-1, 1]");
    } else {
      quantize_codes(u, rows, cols, o.bits, copies, o.seed, first_realisation, o.sampling, data.codes);
    }
    return pack_lines(data);
  };
  auto record = [&](const KernelRun& run, int64_t start) {
    fixed.insert(fixed.end(), run.models.begin(), run.models.end());
    int64_t previous = start;
    for (int64_t end : run.stats.epoch_end) {
      res.epoch_cycles.push_back(end - previous);
      previous = end;
    }
    res.cycles += run.stats.cycles;
    ++res.calls;
    res.stats = run.stats;
  };
  const MemoryModel mem{o.bytes_per_cycle};
  if (one_call) {
    cfg.epochs = static_cast<uint32_t>(o.epochs);
    if (o.epochs > 0) record(run_kernel(o.bits, o.lanes, layout(0), cfg, nullptr, mem), 0);
  } else {
    cfg.epochs = 1;
    std::vector<int32_t> model(cols + 1, 0);
    for (int e = 0; e < o.epochs; ++e) {
      cfg.first_epoch = static_cast<uint32_t>(e);
      cfg.load_model = e > 0;
      const KernelRun run = run_kernel(o.bits, o.lanes, layout(e), cfg, model.data(), mem);
      std::copy(run.models.end() - (cols + 1), run.models.end(), model.begin());
      record(run, 0);
    }
  }
  res.models.resize(fixed.size());
  for (size_t i = 0; i < fixed.size(); ++i) {
    const bool intercept = i % (cols + 1) == static_cast<size_t>(cols);
    res.models[i] = from_fixed(fixed[i]) * res.label_scale + (intercept ? res.label_offset : 0.0);
  }
  return res;
}

}  // namespace zipml::fpga
