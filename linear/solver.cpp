#include "solver.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "../kernels/common/philox.h"
#include "../kernels/common/quantize.h"
#include "dataset.h"
#include "kernels.h"
#include "team.h"

namespace zipml::linear {
namespace {

// Philox streams (the core's `offset`) of the solver's own random choices; the store's copies use
// the streams copy * samples + sample, far below these.
constexpr uint64_t kStreamModel = 1ull << 56;
constexpr uint64_t kStreamResidual = 2ull << 56;
constexpr uint64_t kStreamGradient = 3ull << 56;
constexpr uint64_t kStreamShuffle = 4ull << 56;
constexpr uint64_t kStreamOrder = 5ull << 56;

// The residuals of the integer engine are rounded stochastically to the symmetric 8-bit grid, and
// its mini-batches are small enough for 32-bit sums of code * residual.
constexpr int kResidualBits = 8;
constexpr int64_t kMaxIntegerBatch = 16384;

// A permutation of [0, n) by Fisher-Yates with the words of stream (seed, offset).
std::vector<int64_t> permutation(int64_t n, uint64_t seed, uint64_t offset) {
  std::vector<int64_t> p(n);
  std::iota(p.begin(), p.end(), int64_t{0});
  for (int64_t i = n - 1; i > 0; --i) {
    const kernel::Philox4 b = kernel::philox_block(seed, offset, static_cast<uint64_t>(i));
    const uint64_t r = ((static_cast<uint64_t>(b.v[0]) << 32) | b.v[1]) % static_cast<uint64_t>(i + 1);
    std::swap(p[i], p[r]);
  }
  return p;
}

void check_option_bits(int bits, const char* name) {
  if (bits != 0 && (bits < 2 || bits > 16))
    throw InputError(std::string(name) + " must be 0 or None (full precision) or from 2 to 16, got " +
                     std::to_string(bits));
}

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// The element-wise loops of a step over a thread's slice, also compiled for AVX-512 and AVX2 (the
// loader picks the clone the processor runs): each element goes through the same IEEE operations
// in every clone, so the choice never changes a bit. Compiled for the baseline alone (SSE2), they
// cost the 4-bit integer engine with averaging 25.3 ms per epoch on 2 threads, against 24.2-24.5.
#if defined(__x86_64__) && defined(__GNUC__)
#define ZIPML_ELEMENTWISE __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ZIPML_ELEMENTWISE
#endif

// w -= gamma * (g + l2 * w)
ZIPML_ELEMENTWISE void sgd_update(float* w, const float* g, int64_t n, float gamma, float l2) {
  for (int64_t j = 0; j < n; ++j) w[j] = w[j] - gamma * (g[j] + l2 * w[j]);
}

// avg += (w - avg) * f: the running mean of the iterates, f = 1 / (iterates so far)
ZIPML_ELEMENTWISE void running_mean(float* avg, const float* w, int64_t n, float f) {
  for (int64_t j = 0; j < n; ++j) avg[j] += (w[j] - avg[j]) * f;
}

// g = coef * (2 G - shift): the integer engine's gradient sums mapped back to the data's scale
ZIPML_ELEMENTWISE void integer_gradient(const int32_t* G, int64_t n, int32_t shift, double coef, float* g) {
  for (int64_t j = 0; j < n; ++j) g[j] = static_cast<float>(coef * static_cast<double>(2 * G[j] - shift));
}

}  // namespace

Sampling parse_sampling(const std::string& name) {
  if (name == "fp32") return Sampling::FP32;
  if (name == "nearest") return Sampling::Nearest;
  if (name == "naive") return Sampling::Naive;
  if (name == "double") return Sampling::Double;
  throw InputError("sampling must be one of fp32, nearest, naive, double, got '" + name + "'");
}

const char* sampling_name(Sampling s) {
  switch (s) {
    case Sampling::FP32: return "fp32";
    case Sampling::Nearest: return "nearest";
    case Sampling::Naive: return "naive";
    case Sampling::Double: return "double";
  }
  return "?";
}

Schedule parse_schedule(const std::string& name) {
  if (name == "constant") return Schedule::Constant;
  if (name == "inverse") return Schedule::Inverse;
  if (name == "inverse_sqrt") return Schedule::InverseSqrt;
  if (name == "exponential") return Schedule::Exponential;
  throw InputError("schedule must be one of constant, inverse, inverse_sqrt, exponential, got '" + name + "'");
}

Engine parse_engine(const std::string& name) {
  if (name == "auto") return Engine::Auto;
  if (name == "float") return Engine::Float;
  if (name == "integer") return Engine::Integer;
  throw InputError("engine must be one of auto, float, integer, got '" + name + "'");
}

double step_at(const Options& o, double epoch) {
  switch (o.schedule) {
    case Schedule::Constant: return o.step_size;
    case Schedule::Inverse: return o.step_size / (1.0 + o.decay * epoch);
    case Schedule::InverseSqrt: return o.step_size / std::sqrt(1.0 + o.decay * epoch);
    case Schedule::Exponential: return o.step_size * std::pow(o.decay, epoch);
  }
  return o.step_size;
}

std::pair<std::vector<double>, double> unscale(const Scaling& s, const std::vector<float>& w, double w0) {
  std::vector<double> coef(w.size());
  double intercept = w0;
  for (size_t j = 0; j < w.size(); ++j) {
    coef[j] = static_cast<double>(w[j]) * s.factor[j];
    intercept -= coef[j] * s.mid[j];
  }
  return {coef, intercept};
}

// ------------------------------------------------------------------------------------------------

struct Trainer::Impl {
  enum class Mode { Plain, Chebyshev, Refetch };

  Options o;
  int64_t rows = 0, cols = 0, cols64 = 0;
  Scaling scaling;
  std::vector<int64_t> order;
  AlignedVector<float> u;  // training order
  std::vector<float> y;
  std::unique_ptr<SampleStore> store;
  std::unique_ptr<Chebyshev> cheb;
  Engine engine = Engine::Float;
  Mode mode = Mode::Plain;
  int samples = 0;          // per value in the store (0: fp32)
  bool fresh = false;       // one copy, redrawn every epoch
  int64_t realisation = 0;  // the realisation the fresh store holds
  int forward_samples = 1;  // dot products per row (Plain 1, Chebyshev d)
  int backward_sample = 0;  // the sample whose values multiply e in the gradient
  int64_t chunk = 256, chunks = 1;  // the features are split among the threads in whole chunks
  int threads = 1;

  int quantities() const { return mode == Mode::Chebyshev ? forward_samples : mode == Mode::Refetch ? 3 : 1; }
  // Thread t's features [slice_begin(t), slice_begin(t + 1)): whole chunks, so multiples of 64.
  int64_t slice_begin(int t) const { return std::min(cols, chunks * t / threads * chunk); }
  bool fp32() const { return store == nullptr; }
  const float* row(int64_t r) const { return u.data() + r * cols; }
};

namespace {

using Impl = Trainer::Impl;
using Mode = Trainer::Impl::Mode;

// State shared by the threads of one training (or gradient) run.
struct Run {
  const Impl& m;
  const Kernels& k;
  int threads;
  Barrier barrier;
  std::vector<float> w, wq, g;     // cols64 each
  std::vector<float> avg;          // the averaged iterate (average_from >= 0)
  std::vector<int8_t> m8;          // the model's integer codes (integer engine)
  std::vector<float> wneg, wpos;   // min(w, 0) and max(w, 0) as read, for the refetch bounds
  std::vector<double> wmax, gmax;  // per thread
  std::vector<int64_t> partial;    // integer engine, [thread][row of the batch]: the row's integer dot
                                   // product over the thread's slice of the features
  std::vector<double> e;           // float engines, per row of the batch: the loss slope, set by the
                                   // row's thread
  std::vector<uint8_t> refetch;    // per row of the batch: its gradient reads the full-precision row
  std::vector<int64_t> batch_order;
  std::vector<double> eval_partial;
  int64_t refetched = 0;  // rows refetched in the current epoch

  Run(const Impl& impl, int t)
      : m(impl),
        k(active_kernels()),
        threads(t),
        barrier(t),
        w(impl.cols64, 0.0f),
        wq(impl.cols64, 0.0f),
        g(impl.cols64, 0.0f),
        avg(impl.cols64, 0.0f),
        m8(impl.cols64, 0),
        wneg(impl.cols64, 0.0f),
        wpos(impl.cols64, 0.0f),
        wmax(t, 0.0),
        gmax(t, 0.0),
        partial(t * std::min(impl.o.batch_size, impl.rows), 0),
        e(std::min(impl.o.batch_size, impl.rows), 0.0),
        refetch(std::min(impl.o.batch_size, impl.rows), 0) {}
};

// One thread's share: the features [c0, c1) of the model, the gradient and the backward pass (and,
// in the integer engine, of the forward pass: panel `panel` of the store); rows of each mini-batch
// in the forward pass of the float engines (see step); and its scratch buffers.
struct Work {
  int tid = 0;
  int panel = 0;
  int64_t c0 = 0, c1 = 0;
  int64_t msum = 0;  // integer engine: the sum of the model's integer codes over the slice
  double w0 = 0.0;
  double w0_avg = 0.0;
  int64_t averaged = 0;                     // steps in the average
  std::vector<float> values, lower, width;  // per feature of a whole row
  std::vector<double> q;                    // per quantity: the dot products of a row
  std::vector<float> block;                 // batch x slice decoded values
  std::vector<const float*> rows, block_rows;  // the backward pass's rows, from its slice / block
  std::vector<double> e;  // integer engine: every row's loss slope, computed by every thread
  std::vector<float> e_scaled;
  std::vector<const uint8_t*> index_rows, up_rows;
  std::vector<int32_t> G;  // the integer gradient sums of the slice
  std::vector<int8_t> t;

  Work(const Impl& m, int tid_) : tid(tid_) {
    panel = m.engine == Engine::Integer ? tid : 0;
    c0 = m.slice_begin(tid);
    c1 = m.slice_begin(tid + 1);
    const int64_t b = std::min(m.o.batch_size, m.rows);
    values.resize(m.cols);
    lower.resize(m.cols);
    width.resize(m.cols);
    q.resize(m.quantities());
    block.resize(static_cast<size_t>(b * std::max<int64_t>(c1 - c0, 1)));
    rows.resize(b);
    block_rows.resize(b);
    e.resize(b);
    e_scaled.resize(b);
    index_rows.resize(round_up(b, 4));
    up_rows.resize(round_up(b, 4));
    t.resize(round_up(b, 4));
    G.resize(round_up(std::max<int64_t>(c1 - c0, 1), 64));
    w0 = m.o.fit_intercept && is_least_squares(m.o.loss)
             ? std::accumulate(m.y.begin(), m.y.end(), 0.0) / static_cast<double>(m.rows)
             : 0.0;
  }
};

// Rows are requested this far ahead of the forward pass (fp32 rows, one thread, a plain C++ loop:
// 117 ms per GiB without, 98 ms with; the store's contiguous records gain nothing measurable).
constexpr int64_t kPrefetchRows = 4;

void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b);
}

// Everything a thread's step reads of training row r: the row, or its record in the thread's panel.
void prefetch_row(const Impl& m, const Work& W, int copy, int64_t r) {
  if (m.fp32())
    prefetch_bytes(m.row(r), m.cols * 4);
  else
    prefetch_bytes(m.store->record(copy, r, W.panel), m.store->panel_record_bytes(W.panel));
}

// A cursor over the bytes this thread's forward pass reads of the next batch (contiguous in every
// engine's layout: its panel of every row in the integer engine, its rows otherwise). The backward
// pass requests them a few lines at a time between its blocks of features, so that memory works
// while the core computes, without queuing more requests than a core keeps in flight. Measured on
// 2 threads, 1 GiB as fp32: 4-bit integer engine 26.0 -> 24.9 ms per epoch, fp32 80 -> 79 ms.
constexpr int64_t kBackwardBlock = 64;  // features per block of the backward pass
constexpr int kAheadLines = 32;         // lines requested after each block

struct Ahead {
  const char* next = nullptr;
  const char* end = nullptr;
  void advance() {
    for (int line = 0; line < kAheadLines && next < end; ++line, next += 64) __builtin_prefetch(next);
  }
};

Ahead next_batch(const Impl& m, const Work& W, int threads, int copy, int64_t r0) {
  if (r0 < 0) return {};
  const int64_t nb = std::min(m.rows - r0, m.o.batch_size);
  const int64_t b0 = nb * W.tid / threads, b1 = nb * (W.tid + 1) / threads;
  const void* p;
  int64_t bytes;
  if (m.engine == Engine::Integer) {
    p = m.store->record(copy, r0, W.panel);
    bytes = nb * m.store->panel_record_bytes(W.panel);
  } else if (m.fp32()) {
    p = m.row(r0 + b0);
    bytes = (b1 - b0) * m.cols * 4;
  } else {
    p = m.store->record(copy, r0 + b0);
    bytes = (b1 - b0) * m.store->record_bytes();
  }
  const char* c = static_cast<const char*>(p);
  return {c, c + bytes};
}

// The loss slopes of the float engines: the rows of the batch split among the threads, each row's
// dot products computed whole by one thread (float sums depend on their order: this way a row's
// never depends on the thread count), into run.e.
void forward_rows(Run& R, Work& W, int64_t r0, int64_t nb, int copy, const float* wf) {
  const Impl& m = R.m;
  const Options& o = m.o;
  const int64_t b0 = nb * W.tid / R.threads, b1 = nb * (W.tid + 1) / R.threads;
  double* q = W.q.data();  // q[p]: quantity p (a sample's dot product, or a refetch bound)
  for (int64_t kk = b0; kk < b1; ++kk) {
    const int64_t r = r0 + kk;
    if (kk + kPrefetchRows < b1) prefetch_row(m, W, copy, r + kPrefetchRows);
    if (m.fp32()) {
      q[0] = R.k.dot(m.row(r), wf, m.cols);
    } else {
      for (int p = 0; p < m.forward_samples; ++p) {
        m.store->decode_values(copy, r, p, 0, m.cols, W.values.data());
        q[p] = R.k.dot(W.values.data(), wf, m.cols);
      }
      if (m.mode == Mode::Refetch) {  // the interval box [L_j, L_j+1] bounds every sample
        m.store->decode_intervals(copy, r, 0, m.cols, W.lower.data(), W.width.data());
        const double base = R.k.dot(W.lower.data(), wf, m.cols);
        q[1] = base + R.k.dot(W.width.data(), R.wneg.data(), m.cols);
        q[2] = base + R.k.dot(W.width.data(), R.wpos.data(), m.cols);
      }
    }

    const double yk = m.y[r];
    double e = 0.0;
    R.refetch[kk] = 0;
    switch (m.mode) {
      case Mode::Plain: e = loss_slope(o.loss, q[0] + W.w0, yk); break;
      case Mode::Chebyshev: {
        // Horner with one independent sample per factor: unbiased for the polynomial (Section 6.2).
        double acc = 0.0;
        for (int i = m.cheb->degree; i >= 1; --i) {
          const double u = std::clamp(yk * (q[i - 1] + W.w0) / m.cheb->range, -1.0, 1.0);
          acc = (acc + m.cheb->coef[i]) * u;
        }
        e = yk * (acc + m.cheb->coef[0]);
        break;
      }
      case Mode::Refetch: {
        const double lo = q[1] + W.w0, hi = q[2] + W.w0;
        const double margin_lo = yk > 0 ? lo : -hi, margin_hi = yk > 0 ? hi : -lo;
        if (margin_lo >= 1.0) {
          e = 0.0;
        } else if (margin_hi < 1.0) {
          e = o.loss == Loss::Hinge ? -yk : loss_slope(o.loss, q[0] + W.w0, yk);
        } else {  // the bounds straddle the hinge: refetch the full-precision row
          R.refetch[kk] = 1;
          q[0] = R.k.dot(m.row(r), wf, m.cols);
          e = loss_slope(o.loss, q[0] + W.w0, yk);
        }
        break;
      }
    }
    R.e[kk] = e;
  }
  R.barrier.wait(W.tid);  // every row's e is in place
}

// The loss slopes of the integer engine: each thread streams its own panel of the store (the
// features of its slice) for every row of the batch, and the threads exchange only their partial
// integer dot products, exact in any order. Every thread then computes every row's e, into W.e.
void forward_panel(Run& R, Work& W, int64_t r0, int64_t nb, int copy, double dot_scale) {
  const Impl& m = R.m;
  const SampleStore& s = *m.store;
  const int K = s.levels().count;
  int64_t* partial = R.partial.data() + W.tid * nb;
  for (int64_t kk = 0; kk < nb; ++kk) {
    const int64_t r = r0 + kk;
    if (kk + kPrefetchRows < nb) prefetch_row(m, W, copy, r + kPrefetchRows);
    const int64_t sum = R.k.int_dot(s.index_plane(copy, r, W.panel), s.up_plane(copy, r, 0, W.panel),
                                    R.m8.data() + W.c0, 0, W.c1 - W.c0, s.bits());
    partial[kk] = 2 * sum - (K - 1) * W.msum;
  }
  R.barrier.wait(W.tid);  // every thread's partial sums are in place
  for (int64_t kk = 0; kk < nb; ++kk) {
    int64_t q = 0;
    for (int t = 0; t < R.threads; ++t) q += R.partial[t * nb + kk];
    W.e[kk] = loss_slope(m.o.loss, static_cast<double>(q) * dot_scale + W.w0, m.y[r0 + kk]);
  }
}

// One mini-batch step on the training rows [r0, r1): every thread of the run calls it with its
// Work. The forward pass is forward_rows or forward_panel; the backward pass and the update split
// the features. next_r0: the first row of the next batch of the epoch (-1: none). Returns the
// intercept's gradient (the mean of e); the slice of run.g holds the gradient.
double step(Run& R, Work& W, int64_t r0, int64_t r1, int copy, uint64_t step_id, double gamma, bool update,
            int64_t next_r0) {
  const Impl& m = R.m;
  const Options& o = m.o;
  const int64_t nb = r1 - r0;
  const bool integer = m.engine == Engine::Integer;
  const int K = m.store ? m.store->levels().count : 0;

  // 1. The model as the gradient device reads it: each thread its slice.
  const float* wf = R.w.data();
  double dot_scale = 1.0;
  if (o.model_bits > 0) {
    R.wmax[W.tid] = R.k.max_abs(R.w.data(), W.c0, W.c1);
    // Also keeps every thread's reads of the previous step's shared buffers (run.e, run.partial)
    // before any thread's writes of this step's; the integer engine always quantizes the model.
    R.barrier.wait(W.tid);
    const float s = static_cast<float>(*std::max_element(R.wmax.begin(), R.wmax.end()));
    W.msum = R.k.quantize_symmetric(R.w.data(), W.c0, W.c1, s, o.model_bits, o.seed, kStreamModel + step_id,
                                    integer ? nullptr : R.wq.data(), integer ? R.m8.data() : nullptr);
    wf = R.wq.data();
    if (integer) dot_scale = static_cast<double>(s) / ((K - 1.0) * symmetric_half(o.model_bits));
  }
  if (m.mode == Mode::Refetch)
    for (int64_t j = W.c0; j < W.c1; ++j) {
      R.wneg[j] = std::min(wf[j], 0.0f);
      R.wpos[j] = std::max(wf[j], 0.0f);
    }

  // 2. Forward: the loss slope e of every row.
  const double* e = R.e.data();
  if (integer) {
    forward_panel(R, W, r0, nb, copy, dot_scale);  // reads the model's codes of its own slice only
    e = W.e.data();
  } else {
    R.barrier.wait(W.tid);  // the whole model is in place (and the previous step is over on every thread)
    forward_rows(R, W, r0, nb, copy, wf);
  }
  Ahead ahead = next_batch(m, W, R.threads, copy, next_r0);

  double mean_e = 0.0;
  for (int64_t kk = 0; kk < nb; ++kk) mean_e += e[kk];
  mean_e /= static_cast<double>(nb);
  if (m.mode == Mode::Refetch && W.tid == 0)
    R.refetched += std::count(R.refetch.begin(), R.refetch.begin() + nb, uint8_t{1});

  // 3. Backward: this thread's slice of the gradient, sum_k e_k v_k / nb.
  const int64_t width = W.c1 - W.c0;
  if (integer) {
    float se = 0.0f;
    for (int64_t kk = 0; kk < nb; ++kk) {
      W.e_scaled[kk] = static_cast<float>(e[kk]);
      se = std::max(se, std::fabs(W.e_scaled[kk]));
    }
    if (se > 0.0f && width > 0) {
      const int64_t tsum = R.k.quantize_symmetric(W.e_scaled.data(), 0, nb, se, kResidualBits, o.seed,
                                                  kStreamResidual + step_id, nullptr, W.t.data());
      const int64_t n4 = round_up(nb, 4);
      for (int64_t kk = 0; kk < n4; ++kk) {
        const int64_t r = kk < nb ? r0 + kk : r0;
        if (kk >= nb) W.t[kk] = 0;
        W.index_rows[kk] = m.store->index_plane(copy, r, W.panel);
        W.up_rows[kk] = m.store->up_plane(copy, r, m.backward_sample, W.panel);
      }
      for (int64_t j = 0; j < width; j += kBackwardBlock) {
        R.k.int_gemv_t(W.index_rows.data(), W.up_rows.data(), W.t.data(), n4, j, std::min(width, j + kBackwardBlock),
                       m.store->bits(), W.G.data() + j);
        ahead.advance();
      }
      const double coef = se / (static_cast<double>(nb) * (K - 1.0) * symmetric_half(kResidualBits));
      // |2 G - (K - 1) T| <= 2 * 255 * 127 * batch < 2^31 for batches up to kMaxIntegerBatch
      const int32_t shift = static_cast<int32_t>((K - 1) * tsum);
      integer_gradient(W.G.data(), width, shift, coef, R.g.data() + W.c0);
    } else {
      std::fill(R.g.begin() + W.c0, R.g.begin() + W.c1, 0.0f);
    }
  } else if (width > 0) {
    int64_t used = 0;
    for (int64_t kk = 0; kk < nb; ++kk) {
      if (e[kk] == 0.0) continue;
      const int64_t r = r0 + kk;
      if (m.fp32() || R.refetch[kk]) {
        W.rows[used] = m.row(r) + W.c0;
      } else {
        float* dst = W.block.data() + used * width;
        m.store->decode_values(copy, r, m.backward_sample, W.c0, W.c1, dst);
        W.rows[used] = dst;
      }
      W.e_scaled[used] = static_cast<float>(e[kk] / static_cast<double>(nb));
      ++used;
    }
    for (int64_t j = 0; j < width; j += kBackwardBlock) {
      for (int64_t k = 0; k < used; ++k) W.block_rows[k] = W.rows[k] + j;
      R.k.gemv_t(W.block_rows.data(), W.e_scaled.data(), used, std::min(kBackwardBlock, width - j),
                 R.g.data() + W.c0 + j);
      ahead.advance();
    }
  }

  // 4. The gradient as sent to the model's updater.
  if (o.grad_bits > 0) {
    R.gmax[W.tid] = R.k.max_abs(R.g.data(), W.c0, W.c1);
    R.barrier.wait(W.tid);
    const float s = static_cast<float>(*std::max_element(R.gmax.begin(), R.gmax.end()));
    R.k.quantize_symmetric(R.g.data(), W.c0, W.c1, s, o.grad_bits, o.seed, kStreamGradient + step_id, R.g.data(),
                           nullptr);
  }

  // 5. Update the full-precision model: this thread's slice, and its own copy of the intercept.
  if (update) {
    const float gm = static_cast<float>(gamma), l2 = static_cast<float>(o.l2);
    sgd_update(R.w.data() + W.c0, R.g.data() + W.c0, W.c1 - W.c0, gm, l2);
    if (o.fit_intercept) W.w0 -= gamma * mean_e;
  }
  return mean_e;
}

// The objective at (run.w, w0), the rows split in fixed blocks; every thread calls it.
constexpr int64_t kEvalBlock = 4096;

void evaluate_partial(Run& R, const Work& W, const float* w, double w0) {
  const Impl& m = R.m;
  const int64_t blocks = (m.rows + kEvalBlock - 1) / kEvalBlock;
  for (int64_t b = W.tid; b < blocks; b += R.threads) {
    double sum = 0.0;
    for (int64_t r = b * kEvalBlock; r < std::min(m.rows, (b + 1) * kEvalBlock); ++r)
      sum += loss_value(m.o.loss, R.k.dot(m.row(r), w, m.cols) + w0, m.y[r]);
    R.eval_partial[b] = sum;
  }
}

double evaluate_total(const Run& R, const float* w) {
  double sum = 0.0;
  for (double p : R.eval_partial) sum += p;
  double norm = 0.0;
  for (int64_t j = 0; j < R.m.cols; ++j) norm += static_cast<double>(w[j]) * w[j];
  return sum / static_cast<double>(R.m.rows) + 0.5 * R.m.o.l2 * norm;
}

}  // namespace

// ------------------------------------------------------------------------------------------------

Trainer::Trainer(const float* x, const float* y, int64_t rows, int64_t cols, const Options& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.o = options;
  Options& o = m.o;
  check_finite_data(x, y, rows, cols);
  if (is_classifier(o.loss)) check_signed_labels(y, rows, loss_name(o.loss));
  if (o.sampling != Sampling::FP32) check_data_bits(o.bits);
  check_option_bits(o.model_bits, "model_bits");
  check_option_bits(o.grad_bits, "grad_bits");
  if (o.epochs < 0) throw InputError("epochs must be >= 0, got " + std::to_string(o.epochs));
  if (o.batch_size < 1) throw InputError("batch_size must be >= 1, got " + std::to_string(o.batch_size));
  if (!(o.step_size > 0.0) || !std::isfinite(o.step_size))
    throw InputError("step_size must be positive and finite, got " + std::to_string(o.step_size));
  if (o.schedule == Schedule::Exponential ? !(o.decay > 0.0 && o.decay <= 1.0) : !(o.decay >= 0.0))
    throw InputError(o.schedule == Schedule::Exponential
                         ? "decay must be in (0, 1] for the exponential schedule, got " + std::to_string(o.decay)
                         : "decay must be >= 0, got " + std::to_string(o.decay));
  if (!(o.l2 >= 0.0) || !std::isfinite(o.l2)) throw InputError("l2 must be >= 0, got " + std::to_string(o.l2));
  if (o.copies < 0)
    throw InputError("copies must be >= 1, or 0 for fresh samples every epoch, got " + std::to_string(o.copies));
  if (o.threads < 0) throw InputError("threads must be >= 0 (0: all), got " + std::to_string(o.threads));
  if (o.candidates < 2) throw InputError("candidates must be >= 2, got " + std::to_string(o.candidates));
  if (!(o.average_from >= 0.0 || o.average_from == -1.0))
    throw InputError(
        "average must be None (-1) or the training time (in epochs, >= 0) from which iterates are "
        "averaged, got " +
        std::to_string(o.average_from));

  m.rows = rows;
  m.cols = cols;
  m.cols64 = round_up(cols, 64);
  // At most 64 chunks of at least 64 features (a multiple of 64): enough for 16+ threads on 1024
  // features. The threads' slices are whole chunks, which depend on cols only, never on threads.
  m.chunk = std::max<int64_t>(64, round_up((cols + 63) / 64, 64));
  m.chunks = (cols + m.chunk - 1) / m.chunk;
  const int hw = hardware_threads();
  m.threads = static_cast<int>(std::min<int64_t>(o.threads == 0 ? hw : o.threads, m.chunks));

  // Sampling mode and the store it needs.
  if (o.sampling == Sampling::Double) {
    if (is_least_squares(o.loss)) {
      m.samples = 2;
      m.backward_sample = 1;
    } else if (o.loss == Loss::Logistic) {
      m.cheb = std::make_unique<Chebyshev>(Chebyshev::logistic(o.degree, o.chebyshev_range));
      m.mode = Mode::Chebyshev;
      m.forward_samples = o.degree;
      m.samples = o.degree + 1;
      m.backward_sample = o.degree;
    } else {
      m.mode = Mode::Refetch;
      m.samples = o.loss == Loss::Hinge ? 1 : 2;
      m.backward_sample = m.samples - 1;
    }
  } else if (o.sampling != Sampling::FP32) {
    m.samples = 1;
  }
  if (o.sampling == Sampling::Nearest) o.copies = 1;
  m.fresh = o.copies == 0 && m.samples > 0;

  const bool integer_ok = m.samples > 0 && m.mode == Mode::Plain && !o.optimal_levels &&
                          (o.bits == 1 || o.bits == 2 || o.bits == 4 || o.bits == 8) && o.model_bits >= 2 &&
                          o.model_bits <= 8 && o.batch_size <= kMaxIntegerBatch;
  if (o.engine == Engine::Integer && !integer_ok)
    throw InputError(
        "engine='integer' needs sampling nearest, naive or double with a linear gradient (double sampling of "
        "logistic and hinge losses is float only), uniform levels, bits 1, 2, 4 or 8, model_bits from 2 "
        "to 8, and batch_size <= 16384");
  m.engine =
      (o.engine == Engine::Integer || (o.engine == Engine::Auto && integer_ok)) ? Engine::Integer : Engine::Float;

  m.scaling = o.scale ? Scaling::fit(x, rows, cols) : Scaling::identity(x, rows, cols);
  m.order = permutation(rows, o.seed, kStreamOrder);
  m.u.resize(static_cast<size_t>(rows * cols));
  m.y.resize(rows);
  parallel_for(hw, rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* src = x + m.order[r] * cols;
      for (int64_t c = 0; c < cols; ++c) m.u[r * cols + c] = m.scaling.apply(src[c], c);
      m.y[r] = y[m.order[r]];
    }
  });
  if (m.samples > 0) {
    FeatureLevels levels = o.optimal_levels ? FeatureLevels::make_optimal(m.u.data(), rows, cols, o.bits, o.candidates)
                                            : FeatureLevels::make_uniform(o.bits);
    std::vector<int64_t> panel_starts;  // the integer engine: one panel per thread (see forward_panel)
    if (m.engine == Engine::Integer)
      for (int t = 1; t < m.threads; ++t) panel_starts.push_back(m.slice_begin(t));
    m.store = std::make_unique<SampleStore>(SampleStore::build(m.u.data(), rows, cols, std::move(levels), m.samples,
                                                               std::max(o.copies, 1), o.sampling == Sampling::Nearest,
                                                               o.seed, hw, panel_starts));
  }
}

Trainer::~Trainer() = default;

const Options& Trainer::options() const { return impl_->o; }
const Scaling& Trainer::scaling() const { return impl_->scaling; }
const SampleStore* Trainer::store() const { return impl_->store.get(); }
const AlignedVector<float>& Trainer::scaled() const { return impl_->u; }
const std::vector<float>& Trainer::labels() const { return impl_->y; }
const std::vector<int64_t>& Trainer::order() const { return impl_->order; }
Engine Trainer::engine() const { return impl_->engine; }
const Chebyshev* Trainer::chebyshev() const { return impl_->cheb.get(); }

double Trainer::objective(const std::vector<float>& w, double w0) const {
  if (static_cast<int64_t>(w.size()) != impl_->cols)
    throw InputError("w must have " + std::to_string(impl_->cols) + " values, got " + std::to_string(w.size()));
  Run R(*impl_, 1);
  std::copy(w.begin(), w.end(), R.w.begin());
  R.eval_partial.assign((impl_->rows + kEvalBlock - 1) / kEvalBlock, 0.0);
  Work W(*impl_, 0);
  evaluate_partial(R, W, R.w.data(), w0);
  return evaluate_total(R, R.w.data());
}

std::pair<std::vector<double>, double> Trainer::gradient(const std::vector<float>& w, double w0, int64_t r0, int64_t r1,
                                                         int copy, uint64_t step_id) {
  const Impl& m = *impl_;
  if (static_cast<int64_t>(w.size()) != m.cols)
    throw InputError("w must have " + std::to_string(m.cols) + " values, got " + std::to_string(w.size()));
  if (!(0 <= r0 && r0 < r1 && r1 <= m.rows && r1 - r0 <= m.o.batch_size))
    throw InputError("rows [r0, r1) must be a non-empty range of at most batch_size training rows");
  if (copy < 0 || (!m.fresh && copy >= (m.store ? m.store->copies() : 1))) throw InputError("copy is out of range");
  if (m.fresh) {
    if (m.realisation != copy) m.store->redraw(m.u.data(), copy, 0, m.rows);
    impl_->realisation = copy;
    copy = 0;
  }
  Run R(m, m.threads);
  std::copy(w.begin(), w.end(), R.w.begin());
  double mean_e = 0.0;
  run_team(m.threads, [&](int tid) {
    Work W(m, tid);
    W.w0 = w0;
    const double e = step(R, W, r0, r1, copy, step_id, 0.0, false, -1);
    if (tid == 0) mean_e = e;
  });
  return {std::vector<double>(R.g.begin(), R.g.begin() + m.cols), mean_e};
}

Result Trainer::fit() {
  const Impl& m = *impl_;
  const Options& o = m.o;
  Run R(m, m.threads);
  const int64_t nbatches = (m.rows + o.batch_size - 1) / o.batch_size;
  R.eval_partial.assign((m.rows + kEvalBlock - 1) / kEvalBlock, 0.0);
  Result res;
  const int64_t sample_bytes = m.store ? m.store->bytes_per_copy() : m.rows * m.cols * 4;
  double final_w0 = 0.0;
  bool averaged = false;  // some step was averaged: the result is the average
  const int64_t start_realisation = m.realisation;
  run_team(m.threads, [&](int tid) {
    Work W(m, tid);
    // The model whose objective is recorded: the iterate, or its running average once averaging runs.
    auto record = [&](bool averaging) {
      const float* w = averaging ? R.avg.data() : R.w.data();
      const double w0 = averaging ? W.w0_avg : W.w0;
      evaluate_partial(R, W, w, w0);
      R.barrier.wait(tid);
      if (tid == 0) res.loss_history.push_back(evaluate_total(R, w));
    };
    if (o.record_loss) record(false);
    uint64_t step_id = 0;
    for (int epoch = 0; epoch < o.epochs; ++epoch) {
      const int copy = m.store && !m.fresh ? epoch % m.store->copies() : 0;
      if (m.fresh && (epoch > 0 || start_realisation != 0)) {  // every thread redraws its share of the rows
        R.barrier.wait(tid);
        m.store->redraw(m.u.data(), epoch, m.rows * tid / m.threads, m.rows * (tid + 1) / m.threads);
      }
      if (tid == 0) {
        R.batch_order = permutation(nbatches, o.seed, kStreamShuffle + static_cast<uint64_t>(epoch));
        R.refetched = 0;
      }
      R.barrier.wait(tid);
      const auto start = std::chrono::steady_clock::now();
      for (int64_t b = 0; b < nbatches; ++b, ++step_id) {
        const int64_t r0 = R.batch_order[b] * o.batch_size, r1 = std::min(m.rows, r0 + o.batch_size);
        const double time = epoch + static_cast<double>(b) / static_cast<double>(nbatches);  // in epochs
        const int64_t next_r0 = b + 1 < nbatches ? R.batch_order[b + 1] * o.batch_size : -1;
        step(R, W, r0, r1, copy, step_id, step_at(o, time), true, next_r0);
        if (o.average_from >= 0 && time >= o.average_from) {  // Polyak-Ruppert: the mean of the iterates
          const float f = 1.0f / static_cast<float>(++W.averaged);
          running_mean(R.avg.data() + W.c0, R.w.data() + W.c0, W.c1 - W.c0, f);
          W.w0_avg += (W.w0 - W.w0_avg) / static_cast<double>(W.averaged);
        }
      }
      R.barrier.wait(tid);
      if (tid == 0) {
        res.epoch_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        res.bytes_read.push_back(sample_bytes + m.rows * 4 + R.refetched * m.cols * 4);
        res.refetch_fraction.push_back(static_cast<double>(R.refetched) / static_cast<double>(m.rows));
      }
      if (o.record_loss) record(W.averaged > 0);
    }
    if (tid == 0) {
      final_w0 = W.averaged > 0 ? W.w0_avg : W.w0;
      averaged = W.averaged > 0;
    }
  });
  if (m.fresh && o.epochs > 0) impl_->realisation = o.epochs - 1;
  res.w.assign((averaged ? R.avg : R.w).begin(), (averaged ? R.avg : R.w).begin() + m.cols);
  res.w0 = final_w0;
  std::tie(res.coef, res.intercept) = unscale(m.scaling, res.w, res.w0);
  res.scaling = m.scaling;
  res.engine = m.engine == Engine::Integer ? "integer" : "float";
  res.isa = R.k.name;
  res.samples = m.samples;
  res.store_bytes = sample_bytes;
  res.chebyshev_error = m.cheb ? m.cheb->max_error : 0.0;
  return res;
}

}  // namespace zipml::linear
