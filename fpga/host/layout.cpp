#include "layout.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../../kernels/common/philox.h"
#include "../../kernels/common/quantize.h"

namespace zipml::fpga {

namespace {

template <int Q>
void pack(const TrainingData& d, std::vector<Line>& out) {
  using F = Format<Q>;
  const int64_t R = F::lines_per_row(d.cols);
  out.assign(static_cast<size_t>(d.copies * d.rows * R), Line{});
  for (int c = 0; c < d.copies; ++c)
    for (int64_t r = 0; r < d.rows; ++r) {
      Line* row = out.data() + (c * d.rows + r) * R;
      for (int64_t k = 0; k < d.cols; ++k) {
        Line& line = row[k / F::kPerLine];
        const int slot = static_cast<int>(k % F::kPerLine);
        if constexpr (F::kFloat) {
          uint32_t bits;
          std::memcpy(&bits, &d.values[r * d.cols + k], sizeof bits);
          line.set_slot32(slot, bits);
        } else {
          const int64_t i = (c * d.rows + r) * d.cols + k;
          line.set(F::kSlotBits * slot, Q, d.codes[0][i]);
          line.set(F::kSlotBits * slot + Q, Q, d.codes[1][i]);
        }
      }
      row[R - 1].set_slot32(15, static_cast<uint32_t>(d.labels[r]));
    }
}

}  // namespace

int64_t lines_per_row(int bits, int64_t cols) {
  switch (bits) {
    case 1:
      return Format<1>::lines_per_row(cols);
    case 2:
      return Format<2>::lines_per_row(cols);
    case 4:
      return Format<4>::lines_per_row(cols);
    case 8:
      return Format<8>::lines_per_row(cols);
    case kFloatBits:
      return Format<kFloatBits>::lines_per_row(cols);
  }
  throw std::invalid_argument("bits must be one of 1, 2, 4, 8 or 32 (float), got " + std::to_string(bits));
}

void quantize_codes(const float* u, int64_t rows, int64_t cols, int bits, int copies, uint64_t seed,
                    int64_t first_realisation, Sampling sampling, std::vector<uint8_t> (&codes)[2]) {
  if (bits != 1 && bits != 2 && bits != 4 && bits != 8)
    throw std::invalid_argument("bits must be one of 1, 2, 4, 8 for quantized data, got " + std::to_string(bits));
  if (copies < 1) throw std::invalid_argument("copies must be >= 1, got " + std::to_string(copies));
  const kernel::Levels levels{nullptr, 1 << bits};
  const int samples = sampling == Sampling::Double ? 2 : 1;
  for (auto& c : codes) c.assign(static_cast<size_t>(copies * rows * cols), 0);
  std::vector<kernel::Interval> located(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < cols; ++k) {
      const float x = u[r * cols + k];
      if (!(x >= -1.0f && x <= 1.0f))
        throw std::invalid_argument("u must lie in [-1, 1]; row " + std::to_string(r) + ", column " +
                                    std::to_string(k) + " holds " + std::to_string(x));
      located[k] = kernel::locate(kernel::normalize(x, 1.0f, levels), levels);
    }
    for (int c = 0; c < copies; ++c)
      for (int s = 0; s < samples; ++s) {
        // the stream of sample s of realisation first_realisation + c, as linear/store.cpp numbers them
        const uint64_t stream = static_cast<uint64_t>(first_realisation + c) * samples + s;
        uint8_t* out = codes[s].data() + (c * rows + r) * cols;
        kernel::Philox4 block{};  // the draws of elements index & ~7 .. + 7
        for (int64_t k = 0; k < cols; ++k) {
          const uint64_t index = static_cast<uint64_t>(r * cols + k);
          if (sampling != Sampling::Nearest && (k == 0 || (index & 7) == 0))
            block = kernel::philox_block(seed, stream, index >> 3);
          const kernel::Interval& at = located[k];
          const kernel::ElementDraw d{kernel::block_draw(block, index), seed, stream, index};
          const int rounding = sampling == Sampling::Nearest ? kernel::kNearest : kernel::kStochastic;
          const int up = kernel::round_up(at.frac, rounding, d);
          out[k] = static_cast<uint8_t>(at.index + up);
        }
      }
  }
  if (samples == 1) codes[1] = codes[0];
}

void quantize_double_sampled(const float* u, int64_t rows, int64_t cols, int bits, int copies, uint64_t seed,
                             int64_t first_realisation, std::vector<uint8_t> (&codes)[2]) {
  quantize_codes(u, rows, cols, bits, copies, seed, first_realisation, Sampling::Double, codes);
}

int32_t to_fixed(double v) {
  const double scaled = std::nearbyint(v * static_cast<double>(kOne));
  if (!(scaled == scaled)) throw std::invalid_argument("label is not a number");
  return scaled >= 2147483647.0 ? INT32_MAX : scaled <= -2147483648.0 ? INT32_MIN : static_cast<int32_t>(scaled);
}

std::vector<Line> pack_lines(const TrainingData& data) {
  check_training_data(data);
  std::vector<Line> out;
  switch (data.bits) {
    case 1:
      pack<1>(data, out);
      break;
    case 2:
      pack<2>(data, out);
      break;
    case 4:
      pack<4>(data, out);
      break;
    case 8:
      pack<8>(data, out);
      break;
    default:
      pack<kFloatBits>(data, out);
      break;
  }
  return out;
}

std::vector<int32_t> unpack_models(const std::vector<Line>& lines, int64_t cols, int64_t epochs) {
  const int64_t per_epoch = model_lines(cols);
  if (static_cast<int64_t>(lines.size()) < epochs * per_epoch) throw std::invalid_argument("too few model lines");
  std::vector<int32_t> words(static_cast<size_t>(epochs * (cols + 1)));
  for (int64_t e = 0; e < epochs; ++e)
    for (int64_t k = 0; k <= cols; ++k)
      words[e * (cols + 1) + k] = static_cast<int32_t>(lines[e * per_epoch + k / 16].slot32(static_cast<int>(k % 16)));
  return words;
}

std::vector<Line> pack_model(const int32_t* words, int64_t cols) {
  std::vector<Line> lines(static_cast<size_t>(model_lines(cols)), Line{});
  for (int64_t k = 0; k <= cols; ++k)
    lines[k / 16].set_slot32(static_cast<int>(k % 16), static_cast<uint32_t>(words[k]));
  return lines;
}

}  // namespace zipml::fpga
