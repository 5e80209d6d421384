#include "store.h"

#include <algorithm>
#include <string>

#include "../kernels/common/pack.h"
#include "../kernels/common/philox.h"
#include "dataset.h"
#include "team.h"

namespace zipml::linear {

SampleStore SampleStore::build(const float* u, int64_t rows, int64_t cols, FeatureLevels levels, int samples,
                               int copies, bool nearest, uint64_t seed, int threads) {
  if (samples < 1 || samples > 64) throw InputError("samples must be from 1 to 64, got " + std::to_string(samples));
  if (copies < 1) throw InputError("copies must be at least 1, got " + std::to_string(copies));
  if (nearest && (samples != 1 || copies != 1))
    throw InputError("nearest rounding is deterministic: it stores one sample and one copy");
  SampleStore s;
  s.rows_ = rows;
  s.cols_ = cols;
  s.cols_padded_ = (cols + 7) / 8 * 8;
  s.index_bits_ = kernel::interval_bits(levels.count);
  s.samples_ = samples;
  s.copies_ = copies;
  s.nearest_ = nearest;
  s.levels_ = std::move(levels);
  s.index_bytes_ = s.cols_padded_ * s.index_bits_ / 8;
  s.plane_bytes_ = s.cols_padded_ / 8;
  s.record_bytes_ = s.index_bytes_ + samples * s.plane_bytes_;
  s.data_.assign(static_cast<size_t>(copies * rows * s.record_bytes_ + 64), 0);

  const int64_t padded = s.cols_padded_;
  parallel_for(threads, copies * rows, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> index(padded, 0);
    std::vector<std::vector<uint8_t>> up(samples, std::vector<uint8_t>(padded, 0));
    std::vector<float> frac(cols);
    for (int64_t at = begin; at < end; ++at) {
      const int copy = static_cast<int>(at / rows);
      const int64_t row = at % rows;
      for (int64_t c = 0; c < cols; ++c) {
        const kernel::Levels lv = s.levels_.of(c);
        const kernel::Interval iv = kernel::locate(kernel::normalize(u[row * cols + c], 1.0f, lv), lv);
        index[c] = static_cast<uint8_t>(iv.index);
        frac[c] = iv.frac;
      }
      for (int sample = 0; sample < samples; ++sample) {
        const uint64_t offset = static_cast<uint64_t>(copy) * samples + sample;
        uint64_t block = ~uint64_t{0};
        kernel::Philox4 words{};
        for (int64_t c = 0; c < cols; ++c) {
          const uint64_t element = static_cast<uint64_t>(row * cols + c);
          if (!nearest && (element >> 2) != block) {
            block = element >> 2;
            words = kernel::philox_block(seed, offset, block);
          }
          up[sample][c] = static_cast<uint8_t>(kernel::round_up(
              frac[c], nearest ? kernel::kNearest : kernel::kStochastic, nearest ? 0u : words.v[element & 3]));
        }
      }
      uint8_t* out = s.data_.data() + at * s.record_bytes_;
      for (int64_t b = 0; b < s.index_bytes_; ++b) out[b] = kernel::pack_byte(index.data(), padded, s.index_bits_, b);
      for (int sample = 0; sample < samples; ++sample) {
        uint8_t* plane = out + s.index_bytes_ + sample * s.plane_bytes_;
        for (int64_t b = 0; b < s.plane_bytes_; ++b) plane[b] = kernel::pack_byte(up[sample].data(), padded, 1, b);
      }
    }
  });
  return s;
}

int SampleStore::interval(int copy, int64_t row, int64_t col) const {
  return index_bits_ == 0 ? 0 : kernel::unpack_code(index_plane(copy, row), index_bits_, col);
}

int SampleStore::code(int copy, int64_t row, int64_t col, int sample) const {
  return interval(copy, row, col) + ((up_plane(copy, row, sample)[col >> 3] >> (col & 7)) & 1);
}

void SampleStore::decode_codes(int copy, int64_t row, int sample, int64_t c0, int64_t c1, uint8_t* codes) const {
  const uint8_t* index = index_plane(copy, row);
  const uint8_t* up = up_plane(copy, row, sample);
  const int ib = index_bits_;
  for (int64_t c = c0; c < c1; ++c) {
    unsigned j = 0;
    switch (ib) {
      case 0: break;
      case 2: j = (index[c >> 2] >> ((c & 3) * 2)) & 3u; break;
      case 4: j = (index[c >> 1] >> ((c & 1) * 4)) & 15u; break;
      case 8: j = index[c]; break;
      default: j = kernel::unpack_code(index, ib, c);
    }
    codes[c - c0] = static_cast<uint8_t>(j + ((up[c >> 3] >> (c & 7)) & 1u));
  }
}

void SampleStore::decode_values(int copy, int64_t row, int sample, int64_t c0, int64_t c1, float* values) const {
  uint8_t codes[256];
  for (int64_t a = c0; a < c1; a += 256) {
    const int64_t b = std::min(c1, a + 256);
    decode_codes(copy, row, sample, a, b, codes);
    if (levels_.uniform) {
      const kernel::Levels lv{nullptr, levels_.count};
      for (int64_t c = a; c < b; ++c) values[c - c0] = lv.at(codes[c - a]);
    } else {
      for (int64_t c = a; c < b; ++c) values[c - c0] = levels_.table[c * levels_.count + codes[c - a]];
    }
  }
}

void SampleStore::decode_intervals(int copy, int64_t row, int64_t c0, int64_t c1, float* lower, float* width) const {
  for (int64_t c = c0; c < c1; ++c) {
    const kernel::Levels lv = levels_.of(c);
    const int j = interval(copy, row, c);
    lower[c - c0] = lv.at(j);
    width[c - c0] = lv.count > 1 ? lv.at(j + 1) - lv.at(j) : 0.0f;
  }
}

}  // namespace zipml::linear
