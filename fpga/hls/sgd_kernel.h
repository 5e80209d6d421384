// The SGD accelerator: one pipelined loop in which one iteration is one clock (II = 1), so C
// simulation counts cycles. ZipML (arXiv 1611.05402, Sections 4 and 10; Kara et al., FCCM'17).
//
//   memory --lines--> in_fifo --> DOT SIDE: decode sample 0 of LANES features, multiply by the
//                                 snapshot model x_dot, adder tree, accumulate over the row
//                                    |  the row's lines            |  (dot, label) at row end
//                                    v                             v
//                                 row_fifo                    scalar pipeline (kLatency clocks):
//                                    |                        residual e, h = e 2^G / D
//                                    v                             v
//                                 UPDATE SIDE: decode sample 1, x_upd -= rnd(h t2 / 2^(s+G)), one
//                                 group of LANES features per clock; the batch's last row also
//                                 writes x_dot --> after each epoch, the model to model_out
//
// Mini-batches are deterministic: every dot product of batch j reads the model as it was at the
// start of batch j (x_dot), every update goes to the working copy (x_upd) and the last row of the
// batch writes its result to both. The first row of the next batch reads a group of x_dot only
// after that write (one clock later): the sides walk the groups in the same order, so the batch
// boundary costs kLatency + 1 clocks, not a row. The update's read-modify-write of a group takes
// one clock (the model in LUT RAM or registers, as in ZipML's design; block RAM would need a
// bypass for rows of one group). An epoch's first dot product waits until the
// previous epoch's model has been written out. Timing never changes a bit: the model after every
// epoch equals the plain reference (fpga/reference) for every memory speed.
//
// The memory model (C simulation only) is a token bucket: the memory delivers `bytes_per_cycle`
// on average, at most one line per clock. In synthesis the reader is a plain m_axi read.
#pragma once
#include <cstdint>

#include "format.h"
#include "hls_compat.h"

#ifndef __SYNTHESIS__
#include <vector>
#endif

namespace zipml::fpga {

// Sizes of one design: precision Q (kFloatBits for float), LANES features per clock, and the
// largest feature count it holds on chip.
template <int Q, int LANES, int MAX_FEATURES>
struct Design {
  using F = Format<Q>;
  static_assert(LANES >= 16 && (LANES & (LANES - 1)) == 0, "LANES must be a power of two >= 16");
  static_assert(F::kPerLine % LANES == 0, "LANES must divide the features per line");
  static constexpr int kLanes = LANES;
  static constexpr int kBeats = F::kPerLine / LANES;  // clocks per line
  static constexpr int kMaxFeatures = MAX_FEATURES;
  static constexpr int kMaxLines = static_cast<int>(F::lines_per_row(MAX_FEATURES));
  static constexpr int kMaxGroups = kMaxLines * kBeats;
  static constexpr int kTreeDepth = ceil_log2(LANES);
  // Clocks from the dot side's last group of a row to the scalar at the update side: lane
  // multiply 1, adder tree log2(LANES), accumulate 1, divide by the constant D 2, loss (compare or
  // table) 1, h 1. An assumption of the design, to be replaced by the csynth schedule.
  static constexpr int kLatency = kTreeDepth + 6;
  static constexpr int kInDepth = 64;                         // lines prefetched from memory
  static constexpr int kRowDepth = kMaxLines + kLatency + 8;  // lines waiting for the update side
  static constexpr int kScalarSlots = kLatency + 4;           // rows between dot end and update start
};

struct MemoryModel {
  double bytes_per_cycle = 0.0;  // <= 0: unlimited (one line per clock)
};

#ifndef __SYNTHESIS__
struct KernelStats {
  int64_t cycles = 0;
  int64_t lines_read = 0;
  std::vector<int64_t> epoch_end;  // clock after each epoch's model was written
  // Clocks in which the dot side or the update side did no work, by cause.
  int64_t dot_wait_data = 0, dot_wait_sync = 0, dot_wait_fifo = 0, dot_wait_credit = 0;
  int64_t dot_wait_writeout = 0, update_wait_scalar = 0;
  int in_fifo_peak = 0, row_fifo_peak = 0, scalar_fifo_peak = 0;
};
#else
struct KernelStats;
#endif

// Sum of N values as an explicit balanced tree of log2(N) levels (one register stage per level).
template <int N>
int64_t adder_tree(int64_t (&v)[N]) {
  static_assert((N & (N - 1)) == 0, "the adder tree needs a power of two");
  for (int width = N / 2; width >= 1; width /= 2) {
    ZIPML_PRAGMA(HLS UNROLL)
    for (int i = 0; i < width; ++i) {
      ZIPML_PRAGMA(HLS UNROLL)
      v[i] = v[2 * i] + v[2 * i + 1];
    }
  }
  return v[0];
}

template <int Q, int LANES, int MAX_FEATURES>
void sgd_kernel(const Line* data, const Line* model_in, Line* model_out, const SgdConfig& cfg, const MemoryModel& mem,
                KernelStats* stats) {
  using Dz = Design<Q, LANES, MAX_FEATURES>;
  using F = typename Dz::F;
  constexpr int kBeats = Dz::kBeats;

  ZIPML_SIM_CHECK(cfg.rows >= 1 && cfg.cols >= 1 && cfg.cols <= static_cast<uint32_t>(MAX_FEATURES),
                  "rows must be >= 1 and cols in [1, MAX_FEATURES]");
  ZIPML_SIM_CHECK(cfg.copies >= 1 && cfg.batch_log2 <= 24 && valid_loss(cfg.loss), "invalid copies, batch or loss");
  ZIPML_SIM_CHECK(epoch_shift(cfg, cfg.epochs ? cfg.epochs - 1 : 0) <= kMaxShift && cfg.l2_shift <= 31,
                  "step or ridge shift out of range");

  const int64_t n = cfg.cols, m = cfg.rows, epochs = cfg.epochs;
  const int64_t groups = F::lines_per_row(n) * kBeats;  // G: clocks per row on each side
  const int64_t batch = int64_t{1} << cfg.batch_log2;
  const int64_t lines_per_copy = m * F::lines_per_row(n);
  const int64_t total_lines = epochs * lines_per_copy;
  const int64_t out_lines = model_lines(n);
  const int64_t stored_words = groups * LANES;  // model words on chip, padding lanes included
  const int64_t init_lines = out_lines > stored_words / 16 ? out_lines : stored_words / 16;
  const Loss loss = static_cast<Loss>(cfg.loss);

  // The model, twice: the snapshot the dot products read and the working copy the updates write.
  int32_t x_dot[Dz::kMaxGroups][LANES];
  int32_t x_upd[Dz::kMaxGroups][LANES];
  ZIPML_PRAGMA(HLS ARRAY_PARTITION variable = x_dot complete dim = 2)
  ZIPML_PRAGMA(HLS ARRAY_PARTITION variable = x_upd complete dim = 2)
  // The update side writes x_dot only for a group the dot side reads at least one clock later.
  ZIPML_PRAGMA(HLS DEPENDENCE variable = x_dot inter false)
  ZIPML_PRAGMA(HLS DEPENDENCE variable = x_upd inter false)
  int32_t x0_dot = 0, x0_upd = 0;

  Fifo<Line, Dz::kInDepth> in_fifo;
  Fifo<Line, Dz::kRowDepth> row_fifo;
  Fifo<RowScalar, Dz::kScalarSlots> scalar_fifo;
  RowScalar delay[Dz::kLatency];
  bool delay_valid[Dz::kLatency];
  ZIPML_PRAGMA(HLS ARRAY_PARTITION variable = delay complete)
  ZIPML_PRAGMA(HLS ARRAY_PARTITION variable = delay_valid complete)
  for (int i = 0; i < Dz::kLatency; ++i) delay_valid[i] = false;

  int64_t init_line = 0;                                     // model lines loaded or cleared
  int64_t read_lines = 0;                                    // memory reader
  int64_t d_epoch = 0, d_row = 0, d_group = 0, d_batch = 0;  // dot side (d_batch counts across epochs)
  int64_t acc = 0;
  int64_t u_epoch = 0, u_row = 0, u_group = 0;  // update side
  bool u_active = false;
  RowScalar u_scalar{0, 0};
  int64_t closed_batches = 0, closing_progress = 0;  // batch sync
  int64_t outstanding = 0;                           // rows between dot end and update start
  int64_t written_epochs = 0, w_line = 0;            // model write-out
  bool w_pending = false;

#ifndef __SYNTHESIS__
  const int64_t line_cost = int64_t{64} << 16;  // the token bucket, in 1/65536 bytes
  const int64_t per_cycle = mem.bytes_per_cycle > 0 && mem.bytes_per_cycle < 64
                                ? static_cast<int64_t>(mem.bytes_per_cycle * 65536.0 + 0.5)
                                : line_cost;
  int64_t credits = 0;
  if (stats) *stats = KernelStats{};
#endif

  int64_t cycle = 0;
  for (; written_epochs < epochs; ++cycle) {
    ZIPML_PRAGMA(HLS PIPELINE II = 1)
    // What every stage sees of the others: registers, i.e. the state at the start of the clock.
    const bool init_done = init_line == init_lines;
    const int64_t seen_closed = closed_batches, seen_progress = closing_progress;
    const int64_t seen_outstanding = outstanding, seen_written = written_epochs;
    const int in_count = in_fifo.count(), row_count = row_fifo.count();

    // 1. Write-out: after the update side finished an epoch, one line of 16 weights per clock.
    if (w_pending) {
      Line out;
      for (int w = 0; w < 16; ++w) {
        ZIPML_PRAGMA(HLS UNROLL)
        const int64_t f = 16 * w_line + w;
        const int32_t v = f < n ? x_upd[f / LANES][f % LANES] : f == n ? x0_upd : 0;
        out.set_slot32(w, static_cast<uint32_t>(v));
      }
      model_out[written_epochs * out_lines + w_line] = out;
      if (++w_line == out_lines) {
        w_line = 0;
        w_pending = false;
        ++written_epochs;
#ifndef __SYNTHESIS__
        if (stats) stats->epoch_end.push_back(cycle + 1);
#endif
      }
    }

    // 2. Update side: one group of LANES weights per clock.
    if (!u_active && !scalar_fifo.empty()) {
      u_scalar = scalar_fifo.read();
      --outstanding;
      u_active = true;
    }
#ifndef __SYNTHESIS__
    if (stats && !u_active && u_epoch < epochs) ++stats->update_wait_scalar;
#endif
    if (u_active && !row_fifo.empty()) {
      const Line& line = row_fifo.front();
      const int beat = static_cast<int>(u_group % kBeats);
      const int shift = epoch_shift(cfg, static_cast<uint32_t>(u_epoch));
      const int ridge = epoch_ridge_shift(cfg, static_cast<uint32_t>(u_epoch));
      const bool closing = (u_row + 1) % batch == 0 || u_row == m - 1;
      for (int lane = 0; lane < LANES; ++lane) {
        ZIPML_PRAGMA(HLS UNROLL)
        const int64_t f = u_group * LANES + lane;
        const int32_t t2 = f < n ? F::term(line, beat * LANES + lane, F::kSamples - 1) : 0;
        const int32_t nx = lane_update(x_upd[u_group][lane], u_scalar.h, t2, shift, ridge);
        x_upd[u_group][lane] = nx;
        if (closing) x_dot[u_group][lane] = nx;
      }
      if (beat == kBeats - 1) row_fifo.read();
      if (closing) closing_progress = u_group + 1;
      if (u_group == groups - 1) {
        if (cfg.fit_intercept) x0_upd = intercept_update(x0_upd, u_scalar.e, shift);
        if (closing) {
          x0_dot = x0_upd;
          ++closed_batches;
          closing_progress = 0;
        }
        u_group = 0;
        u_active = false;
        if (++u_row == m) {
          u_row = 0;
          ++u_epoch;
          w_pending = true;
        }
      } else {
        ++u_group;
      }
    }

    // 3. The scalar pipeline advances; its output waits in scalar_fifo (room reserved by credits).
    if (delay_valid[Dz::kLatency - 1]) scalar_fifo.write(delay[Dz::kLatency - 1]);
    for (int i = Dz::kLatency - 1; i > 0; --i) {
      ZIPML_PRAGMA(HLS UNROLL)
      delay[i] = delay[i - 1];
      delay_valid[i] = delay_valid[i - 1];
    }
    delay_valid[0] = false;

    // 4. Dot side: one group of LANES features per clock.
    if (init_done && d_epoch < epochs) {
      const int beat = static_cast<int>(d_group % kBeats);
      const bool first_row = d_row % batch == 0;
      const bool synced = !first_row || d_batch == 0 || seen_closed >= d_batch ||
                          (seen_closed == d_batch - 1 && seen_progress > d_group);
      const bool last_group = d_group == groups - 1;
      if (d_row == 0 && d_epoch > seen_written) {  // the previous epoch's model is still being written
#ifndef __SYNTHESIS__
        if (stats) ++stats->dot_wait_writeout;
#endif
      } else if (in_fifo.empty()) {
#ifndef __SYNTHESIS__
        if (stats) ++stats->dot_wait_data;
#endif
      } else if (!synced) {
#ifndef __SYNTHESIS__
        if (stats) ++stats->dot_wait_sync;
#endif
      } else if (beat == 0 && row_count >= Dz::kRowDepth) {
#ifndef __SYNTHESIS__
        if (stats) ++stats->dot_wait_fifo;
#endif
      } else if (last_group && seen_outstanding >= Dz::kScalarSlots) {
#ifndef __SYNTHESIS__
        if (stats) ++stats->dot_wait_credit;
#endif
      } else {
        const Line& line = in_fifo.front();
        int64_t products[LANES];
        ZIPML_PRAGMA(HLS ARRAY_PARTITION variable = products complete)
        for (int lane = 0; lane < LANES; ++lane) {
          ZIPML_PRAGMA(HLS UNROLL)
          const int64_t f = d_group * LANES + lane;
          const int32_t t1 = f < n ? F::term(line, beat * LANES + lane, 0) : 0;
          products[lane] = F::lane_product(x_dot[d_group][lane], t1);
        }
        acc += adder_tree(products);
        if (beat == 0) row_fifo.write(line);
        if (last_group) {
          const int32_t label = static_cast<int32_t>(line.slot32(15));
          delay[0] = row_scalar<F>(acc, x0_dot, label, loss);
          delay_valid[0] = true;
          ++outstanding;
          acc = 0;
        }
        if (beat == kBeats - 1) in_fifo.read();
        if (last_group) {
          d_group = 0;
          if (++d_row == m) {
            d_row = 0;
            ++d_epoch;
            ++d_batch;
          } else if (d_row % batch == 0) {
            ++d_batch;
          }
        } else {
          ++d_group;
        }
      }
    }

    // 5. Model load (or clear) at the start: one line of 16 words per clock.
    if (!init_done) {
      const Line in = cfg.load_model && init_line < out_lines ? model_in[init_line] : Line{};
      for (int w = 0; w < 16; ++w) {
        ZIPML_PRAGMA(HLS UNROLL)
        const int64_t f = 16 * init_line + w;
        const int32_t v = static_cast<int32_t>(in.slot32(w));
        if (f < stored_words) {
          x_dot[f / LANES][f % LANES] = f < n ? v : 0;
          x_upd[f / LANES][f % LANES] = f < n ? v : 0;
        }
        if (f == n) x0_dot = x0_upd = cfg.load_model ? v : 0;
      }
      ++init_line;
    }

    // 6. Memory reader: the next line of the data, copy e % copies in epoch e.
#ifndef __SYNTHESIS__
    // The bucket keeps the fraction of a line left after a read, and never banks more than one line
    // while the reader is blocked.
    credits = credits + per_cycle > line_cost + per_cycle ? line_cost + per_cycle : credits + per_cycle;
    const bool memory_ready = credits >= line_cost;
#else
    const bool memory_ready = true;
#endif
    if (read_lines < total_lines && in_count < Dz::kInDepth && memory_ready) {
      const int64_t epoch = read_lines / lines_per_copy;
      const int64_t address = (epoch % cfg.copies) * lines_per_copy + read_lines % lines_per_copy;
      in_fifo.write(data[address]);
      ++read_lines;
#ifndef __SYNTHESIS__
      credits -= line_cost;
#endif
    }
  }

#ifndef __SYNTHESIS__
  if (stats) {
    stats->cycles = cycle;
    stats->lines_read = read_lines;
    stats->in_fifo_peak = in_fifo.peak();
    stats->row_fifo_peak = row_fifo.peak();
    stats->scalar_fifo_peak = scalar_fifo.peak();
  }
#endif
}

}  // namespace zipml::fpga
