// The quantized sample store (ZipML, arXiv 1611.05402, Section 4): S independent stochastic
// samples of every value, stored compactly. All samples of a value v lie in the same interval
// [L_j, L_j+1] of its feature's levels, so a record keeps the interval index j once plus one
// round-up bit per sample: sample s has code j + up_s and value L[j + up_s]. Double sampling is
// S = 2, the Chebyshev estimator of degree d uses S = d + 1, naive sampling S = 1, and nearest
// rounding S = 1 with the deterministic round-up bit.
//
// Every bit is the core's (kernels/common): v = clamp(u, L_0, L_K-1), j and frac by
// kernel::locate, round up by kernel::round_up with the Philox4x32-10 draw (and, in a tie, the tie
// word) of element (row * cols + col) in stream (seed, offset = copy * S + sample). Copy c of a
// double-sampled store therefore equals the core's double_sample(u, bits, scale=1, seed, offset=2c).
//
// Layout: the features are cut into panels (one by default; the integer engine asks for one per
// thread, so that each thread streams its own bytes: linear/solver.cpp). Copies one after another;
// within a copy, panels one after another; within a panel, one record per row:
//   [interval index j of each feature of the panel, index_bits = ceil(log2(K - 1)) bits each, LSB-first]
//   [round-up bits of sample 0, 1 bit per feature, LSB-first] ... [of sample S - 1]
// A panel's features are padded with zeros to a multiple of 8 so every plane starts on a byte
// (panels other than the last hold a multiple of 64 features). Records stream sequentially; the
// SIMD kernels decode 64 features per step from them (the index plane by shifts, the round-up plane
// as a mask) and transpose groups of 4 rows in registers for the gradient, so the same bytes feed
// both halves of a mini-batch step (linear/kernels.h). The layout never changes a sample's bits.
#pragma once
#include <cstdint>
#include <vector>

#include "aligned.h"
#include "levels.h"

namespace zipml::linear {

class SampleStore {
 public:
  SampleStore() = default;
  // u: rows x cols in [-1, 1] (the scaled training data in training order). panel_starts: the
  // first feature of each panel after the first, increasing multiples of 64 below cols.
  static SampleStore build(const float* u, int64_t rows, int64_t cols, FeatureLevels levels, int samples, int copies,
                           bool nearest, uint64_t seed, int threads, const std::vector<int64_t>& panel_starts = {});

  // Fresh samples: rewrites rows [row0, row1) of a one-copy stochastic store with the samples of
  // copy `realisation` of the same seed (what copy `realisation` of a larger store would hold).
  void redraw(const float* u, int64_t realisation, int64_t row0, int64_t row1);

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t cols_padded() const { return cols_padded_; }
  int bits() const { return levels_.bits; }
  int index_bits() const { return index_bits_; }
  int samples() const { return samples_; }
  int copies() const { return copies_; }
  bool nearest() const { return nearest_; }
  const FeatureLevels& levels() const { return levels_; }

  // Bytes of one row over all panels: its interval indices, one round-up plane, all its planes.
  int64_t index_bytes() const { return index_bytes_; }
  int64_t plane_bytes() const { return plane_bytes_; }
  int64_t record_bytes() const { return record_bytes_; }
  int64_t bytes_per_copy() const { return record_bytes_ * rows_; }

  int panels() const { return static_cast<int>(panels_.size()); }
  int64_t panel_begin(int p) const { return panels_[p].begin; }  // first feature of panel p
  int64_t panel_end(int p) const { return p + 1 < panels() ? panels_[p + 1].begin : cols_; }
  int64_t panel_record_bytes(int p) const { return panels_[p].record_bytes; }

  // The record of one row in panel p, and its planes: feature panel_begin(p) + i is field i.
  const uint8_t* record(int copy, int64_t row, int p = 0) const { return data_.data() + offset(copy, row, p); }
  const uint8_t* index_plane(int copy, int64_t row, int p = 0) const { return record(copy, row, p); }
  const uint8_t* up_plane(int copy, int64_t row, int sample, int p = 0) const {
    return record(copy, row, p) + panels_[p].index_bytes + sample * panels_[p].plane_bytes;
  }

  // Slow accessors (tests, references): the interval index and the code of one value.
  int interval(int copy, int64_t row, int64_t col) const;
  int code(int copy, int64_t row, int64_t col, int sample) const;

  // codes[col] = code of sample `sample` for cols [c0, c1) of one row.
  void decode_codes(int copy, int64_t row, int sample, int64_t c0, int64_t c1, uint8_t* codes) const;
  // values[col] = L[code] for cols [c0, c1) of one row.
  void decode_values(int copy, int64_t row, int sample, int64_t c0, int64_t c1, float* values) const;
  // lower[col] = L[j] and width[col] = L[j+1] - L[j] of the interval holding each value.
  void decode_intervals(int copy, int64_t row, int64_t c0, int64_t c1, float* lower, float* width) const;

 private:
  struct Panel {
    int64_t begin = 0;  // first feature
    int64_t index_bytes = 0, plane_bytes = 0, record_bytes = 0;
    int64_t offset = 0;  // of the panel's first record from the start of a copy
  };
  int panel_of(int64_t col) const;
  int64_t offset(int copy, int64_t row, int p) const {
    return copy * bytes_per_copy() + panels_[p].offset + row * panels_[p].record_bytes;
  }
  uint8_t* record_to_fill(int copy, int64_t row, int p) { return data_.data() + offset(copy, row, p); }
  void fill(const float* u, int64_t row0, int64_t row1, int slots, int64_t first_realisation);

  uint64_t seed_ = 0;
  int64_t rows_ = 0, cols_ = 0, cols_padded_ = 0;
  int index_bits_ = 0, samples_ = 0, copies_ = 0;
  bool nearest_ = false;
  FeatureLevels levels_;
  int64_t index_bytes_ = 0, plane_bytes_ = 0, record_bytes_ = 0;
  std::vector<Panel> panels_;
  AlignedVector<uint8_t> data_;  // copies * rows * record_bytes, then 64 bytes of slack for SIMD loads
};

}  // namespace zipml::linear
