#include "sgd_reference.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace zipml::fpga {

int32_t TrainingData::term(int copy, int64_t row, int64_t col, int sample) const {
  if (bits == kFloatBits) {
    uint32_t b;
    std::memcpy(&b, &values[row * cols + col], sizeof b);
    return float_to_fixed(b);
  }
  const uint32_t code = codes[sample][(copy * rows + row) * cols + col];
  return static_cast<int32_t>(2 * code) - ((1 << bits) - 1);
}

void check_training_data(const TrainingData& d) {
  if (d.bits != 1 && d.bits != 2 && d.bits != 4 && d.bits != 8 && d.bits != kFloatBits)
    throw std::invalid_argument("bits must be one of 1, 2, 4, 8 or 32 (float), got " + std::to_string(d.bits));
  if (d.rows < 1 || d.cols < 1) throw std::invalid_argument("rows and cols must be >= 1");
  if (d.copies < 1) throw std::invalid_argument("copies must be >= 1, got " + std::to_string(d.copies));
  if (static_cast<int64_t>(d.labels.size()) != d.rows)
    throw std::invalid_argument("labels must hold one value per row");
  if (d.bits == kFloatBits) {
    if (d.copies != 1) throw std::invalid_argument("the float design stores one copy of the data");
    if (static_cast<int64_t>(d.values.size()) != d.rows * d.cols)
      throw std::invalid_argument("values must hold rows x cols floats");
    return;
  }
  const int64_t size = d.copies * d.rows * d.cols;
  for (int s = 0; s < 2; ++s) {
    if (static_cast<int64_t>(d.codes[s].size()) != size)
      throw std::invalid_argument("codes[" + std::to_string(s) + "] must hold copies x rows x cols codes");
    for (uint8_t c : d.codes[s])
      if (c >= (1u << d.bits))
        throw std::invalid_argument("codes[" + std::to_string(s) + "] holds a code >= 2^bits: " + std::to_string(c));
  }
}

namespace {

template <int Q>
std::vector<int32_t> run(const TrainingData& d, const SgdConfig& c, const int32_t* model_in) {
  using F = Format<Q>;
  const int64_t n = d.cols, m = d.rows, batch = int64_t{1} << c.batch_log2;
  const Loss loss = static_cast<Loss>(c.loss);
  std::vector<int32_t> x(n, 0), snapshot(n);
  int32_t x0 = 0;
  if (c.load_model && model_in) {
    x.assign(model_in, model_in + n);
    x0 = model_in[n];
  }
  std::vector<int32_t> history;
  history.reserve(static_cast<size_t>(c.epochs * (n + 1)));
  for (uint32_t e = 0; e < c.epochs; ++e) {
    const int copy = static_cast<int>(e % static_cast<uint32_t>(d.copies));
    const int shift = epoch_shift(c, e), ridge = epoch_ridge_shift(c, e);
    for (int64_t r0 = 0; r0 < m; r0 += batch) {
      snapshot = x;  // every dot product of the batch reads the model of the batch's start
      const int32_t snapshot0 = x0;
      for (int64_t r = r0; r < m && r < r0 + batch; ++r) {
        int64_t sum = 0;
        for (int64_t k = 0; k < n; ++k) sum += F::lane_product(snapshot[k], d.term(copy, r, k, 0));
        const RowScalar s = row_scalar<F>(sum, snapshot0, d.labels[r], loss);
        for (int64_t k = 0; k < n; ++k)
          x[k] = lane_update(x[k], s.h, d.term(copy, r, k, F::kSamples - 1), shift, ridge);
        if (c.fit_intercept) x0 = intercept_update(x0, s.e, shift);
      }
    }
    history.insert(history.end(), x.begin(), x.end());
    history.push_back(x0);
  }
  return history;
}

}  // namespace

std::vector<int32_t> reference_sgd(const TrainingData& data, const SgdConfig& cfg, const int32_t* model_in) {
  check_training_data(data);
  if (cfg.rows != data.rows || cfg.cols != data.cols) throw std::invalid_argument("cfg.rows/cols must match the data");
  if (cfg.copies != static_cast<uint32_t>(data.copies)) throw std::invalid_argument("cfg.copies must match the data");
  switch (data.bits) {
    case 1:
      return run<1>(data, cfg, model_in);
    case 2:
      return run<2>(data, cfg, model_in);
    case 4:
      return run<4>(data, cfg, model_in);
    case 8:
      return run<8>(data, cfg, model_in);
    default:
      return run<kFloatBits>(data, cfg, model_in);
  }
}

}  // namespace zipml::fpga
