#include "store.h"

#include <algorithm>
#include <string>

#include "../kernels/common/pack.h"
#include "../kernels/common/philox.h"
#include "dataset.h"
#include "kernels.h"
#include "team.h"

namespace zipml::linear {

namespace {

// n codes (n a multiple of 8) packed LSB-first at `bits` bits each: kernel::pack_byte, with direct
// loops for the widths that never straddle a byte.
void pack_codes(const uint8_t* codes, int64_t n, int bits, uint8_t* out) {
  const int64_t bytes = n * bits / 8;
  switch (bits) {
    case 0: return;
    case 1:
      for (int64_t b = 0; b < bytes; ++b) {
        unsigned v = 0;
        for (int i = 0; i < 8; ++i) v |= static_cast<unsigned>(codes[8 * b + i]) << i;
        out[b] = static_cast<uint8_t>(v);
      }
      return;
    case 2:
      for (int64_t b = 0; b < bytes; ++b)
        out[b] =
            static_cast<uint8_t>(codes[4 * b] | codes[4 * b + 1] << 2 | codes[4 * b + 2] << 4 | codes[4 * b + 3] << 6);
      return;
    case 4:
      for (int64_t b = 0; b < bytes; ++b) out[b] = static_cast<uint8_t>(codes[2 * b] | codes[2 * b + 1] << 4);
      return;
    case 8: std::copy(codes, codes + n, out); return;
    default:
      for (int64_t b = 0; b < bytes; ++b) out[b] = kernel::pack_byte(codes, n, bits, b);
  }
}

}  // namespace

SampleStore SampleStore::build(const float* u, int64_t rows, int64_t cols, FeatureLevels levels, int samples,
                               int copies, bool nearest, uint64_t seed, int threads,
                               const std::vector<int64_t>& panel_starts) {
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
  int64_t begin = 0;
  for (size_t p = 0; p <= panel_starts.size(); ++p) {
    Panel q;
    q.begin = begin;
    const int64_t end = p < panel_starts.size() ? panel_starts[p] : cols;
    if (p < panel_starts.size() && !(end > begin && end < cols && end % 64 == 0))
      throw InputError("panel_starts must be increasing multiples of 64 below cols, got " + std::to_string(end));
    const int64_t padded = (end - begin + 7) / 8 * 8;
    q.index_bytes = padded * s.index_bits_ / 8;
    q.plane_bytes = padded / 8;
    q.record_bytes = q.index_bytes + samples * q.plane_bytes;
    q.offset = s.record_bytes_ * rows;
    s.index_bytes_ += q.index_bytes;
    s.plane_bytes_ += q.plane_bytes;
    s.record_bytes_ += q.record_bytes;
    s.panels_.push_back(q);
    begin = end;
  }
  s.data_.assign(static_cast<size_t>(copies * rows * s.record_bytes_ + 64), 0);

  s.seed_ = seed;
  parallel_for(threads, rows, [&](int64_t begin, int64_t end) { s.fill(u, begin, end, copies, 0); });
  return s;
}

void SampleStore::redraw(const float* u, int64_t realisation, int64_t row0, int64_t row1) {
  if (copies_ != 1 || nearest_) throw InputError("redraw needs a stochastic store of one copy");
  fill(u, row0, row1, 1, realisation);
}

// The interval index and fraction of a value do not depend on the sample: locate and pack once per
// row (copied to the other slots), then draw each sample's round-up bits, each panel's part of the
// row into its own record.
void SampleStore::fill(const float* u, int64_t row0, int64_t row1, int slots, int64_t first_realisation) {
  const int64_t padded = cols_padded_;
  const Kernels& k = active_kernels();
  std::vector<uint8_t> index(padded, 0), up(padded, 0);
  std::vector<float> frac(cols_);
  std::vector<uint16_t> draws(cols_);
  for (int64_t row = row0; row < row1; ++row) {
    for (int64_t c = 0; c < cols_; ++c) {
      const kernel::Levels lv = levels_.of(c);
      const kernel::Interval iv = kernel::locate(kernel::normalize(u[row * cols_ + c], 1.0f, lv), lv);
      index[c] = static_cast<uint8_t>(iv.index);
      frac[c] = iv.frac;
    }
    for (int slot = 0; slot < slots; ++slot) {
      for (int p = 0; p < panels(); ++p) {
        if (slot == 0)
          pack_codes(index.data() + panel_begin(p), panels_[p].plane_bytes * 8, index_bits_, record_to_fill(0, row, p));
        else  // every slot holds the same indices
          std::copy_n(record(0, row, p), panels_[p].index_bytes, record_to_fill(slot, row, p));
      }
      for (int sample = 0; sample < samples_; ++sample) {
        if (nearest_) {
          for (int64_t c = 0; c < cols_; ++c)
            up[c] = static_cast<uint8_t>(kernel::round_up(frac[c], kernel::kNearest, kernel::ElementDraw{}));
        } else {
          const uint64_t stream = static_cast<uint64_t>(first_realisation + slot) * samples_ + sample;
          const uint64_t first = static_cast<uint64_t>(row * cols_);
          k.philox_draws(seed_, stream, first, cols_, draws.data());
          // kernel::round_up in two passes, so that the first has no branch and vectorizes: the
          // pointers, n and the int reduction keep it so (a byte store may alias the vectors' members,
          // and GCC does not vectorize a bool reduction).
          const float* f = frac.data();
          const uint16_t* r = draws.data();
          uint8_t* bit = up.data();
          const int64_t n = cols_;
          int ties = 0;
          for (int64_t c = 0; c < n; ++c) {
            const int32_t threshold = kernel::draw_threshold(f[c]);
            bit[c] = static_cast<uint8_t>(r[c] < threshold);
            ties |= static_cast<int>(r[c] == threshold);
          }
          for (int64_t c = 0; ties && c < n; ++c) {
            const kernel::ElementDraw d{r[c], seed_, stream, first + c};
            bit[c] = static_cast<uint8_t>(kernel::round_up(f[c], kernel::kStochastic, d));
          }
        }
        for (int p = 0; p < panels(); ++p)
          pack_codes(up.data() + panel_begin(p), panels_[p].plane_bytes * 8, 1,
                     record_to_fill(slot, row, p) + panels_[p].index_bytes + sample * panels_[p].plane_bytes);
      }
    }
  }
}

int SampleStore::panel_of(int64_t col) const {
  int p = 0;
  while (p + 1 < panels() && panels_[p + 1].begin <= col) ++p;
  return p;
}

int SampleStore::interval(int copy, int64_t row, int64_t col) const {
  const int p = panel_of(col);
  return index_bits_ == 0 ? 0 : kernel::unpack_code(index_plane(copy, row, p), index_bits_, col - panel_begin(p));
}

int SampleStore::code(int copy, int64_t row, int64_t col, int sample) const {
  const int p = panel_of(col);
  const int64_t i = col - panel_begin(p);
  return interval(copy, row, col) + ((up_plane(copy, row, sample, p)[i >> 3] >> (i & 7)) & 1);
}

void SampleStore::decode_codes(int copy, int64_t row, int sample, int64_t c0, int64_t c1, uint8_t* codes) const {
  const int ib = index_bits_;
  for (int p = panel_of(c0); p < panels() && panel_begin(p) < c1; ++p) {
    const uint8_t* index = index_plane(copy, row, p);
    const uint8_t* up = up_plane(copy, row, sample, p);
    const int64_t first = panel_begin(p);
    for (int64_t col = std::max(c0, first); col < std::min(c1, panel_end(p)); ++col) {
      const int64_t c = col - first;
      unsigned j = 0;
      switch (ib) {
        case 0: break;
        case 2: j = (index[c >> 2] >> ((c & 3) * 2)) & 3u; break;
        case 4: j = (index[c >> 1] >> ((c & 1) * 4)) & 15u; break;
        case 8: j = index[c]; break;
        default: j = kernel::unpack_code(index, ib, c);
      }
      codes[col - c0] = static_cast<uint8_t>(j + ((up[c >> 3] >> (c & 7)) & 1u));
    }
  }
}

void SampleStore::decode_values(int copy, int64_t row, int sample, int64_t c0, int64_t c1, float* values) const {
  const int bits = levels_.bits;
  const int p = panel_of(c0);
  if (levels_.uniform && (bits == 1 || bits == 2 || bits == 4 || bits == 8) && (c0 - panel_begin(p)) % 64 == 0 &&
      c1 <= panel_end(p)) {
    active_kernels().decode_uniform(index_plane(copy, row, p), up_plane(copy, row, sample, p), c0 - panel_begin(p),
                                    c1 - panel_begin(p), bits, values);
    return;
  }
  if (panels() > 1 && c1 > panel_end(p)) {  // one panel at a time
    for (int64_t a = c0; a < c1; a = std::min(c1, panel_end(panel_of(a))))
      decode_values(copy, row, sample, a, std::min(c1, panel_end(panel_of(a))), values + (a - c0));
    return;
  }
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
