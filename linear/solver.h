// Low-precision SGD for linear models: ZipML (Zhang et al., ICML 2017, arXiv 1611.05402).
//
// Training data are scaled per feature to [-1, 1], shuffled once, and (unless sampling is fp32)
// quantized into a SampleStore of `copies` independent realisations walked one per epoch. A
// mini-batch step computes, for each sample a of the batch,
//   fp32     e = l'(a.w + w0) with the full-precision row, gradient e * a;
//   nearest  the same with deterministically rounded codes (biased: the rounded data's optimum);
//   naive    the same with one stochastic sample Q(a) in both places (biased: Section 3);
//   double   unbiased estimators built from independent samples (Sections 4 and 6):
//            least squares and LS-SVM  e = Q1.w + w0 - y, gradient e * Q2(a);
//            logistic   e = y P(y (Q1.w + w0), ..., y (Qd.w + w0)), the Chebyshev polynomial of
//                       degree d evaluated with one independent sample per factor, times Q0(a);
//            hinge / squared hinge  the refetching heuristic: from the interval indices alone
//                       the margin is bounded; if the bound leaves the hinge undecided the full-
//                       precision row is refetched, else the gradient uses the samples.
// End to end (Section 4.6) the model is read quantized stochastically to model_bits and the
// gradient is quantized stochastically to grad_bits before the update of the full-precision model.
// The loss history is computed on the full-precision data.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "aligned.h"
#include "levels.h"
#include "losses.h"
#include "scaling.h"
#include "store.h"

namespace zipml::linear {

enum class Sampling { FP32, Nearest, Naive, Double };
enum class Schedule { Constant, Inverse, InverseSqrt, Exponential };
enum class Engine { Auto, Float, Integer };

Sampling parse_sampling(const std::string& name);
Schedule parse_schedule(const std::string& name);
Engine parse_engine(const std::string& name);
const char* sampling_name(Sampling s);

struct Options {
  Loss loss = Loss::LeastSquares;
  Sampling sampling = Sampling::Double;
  int bits = 8;                 // data bits, 1 to 8
  bool optimal_levels = false;  // variance-optimal levels per feature instead of the uniform grid
  int64_t candidates = 1024;    // candidate points of the optimal-levels dynamic program
  int model_bits = 0;           // 0: the model is read in full precision; else 2 to 16
  int grad_bits = 0;            // 0: full-precision gradient; else 2 to 16
  int epochs = 10;
  int64_t batch_size = 16;
  double step_size = 0.1;
  Schedule schedule = Schedule::Constant;  // step at training time t (in epochs): see step_at
  double decay = 0.0;
  double l2 = 0.0;  // objective: mean loss + l2 / 2 * |w|^2 (the intercept is not penalised)
  int copies = 1;   // independent quantized copies, one per epoch in turn; 0: fresh
                    // samples every epoch (one copy, redrawn between epochs: what
                    // `epochs` stored copies hold, untimed, in the memory of one)
  uint64_t seed = 0;
  int threads = 1;  // 0: all hardware threads
  Engine engine = Engine::Auto;
  bool scale = true;  // false: X is already in [-1, 1] and is used as is
  bool fit_intercept = true;
  int degree = 7;                // Chebyshev degree (logistic, double sampling)
  double chebyshev_range = 6.0;  // the polynomial approximates l' on [-range, range]
  bool record_loss = true;       // evaluate the objective after every epoch
  double average_from = -1;      // >= 0: return (and record) the mean of the iterates of the steps
                                 // from this training time on (in epochs, fractions allowed; Polyak-
                                 // Ruppert averaging); -1: the last iterate
};

// The step size after t epochs of training (t = e + b / batches at batch b of epoch e, so the step
// decays smoothly within an epoch too): constant gamma; inverse gamma / (1 + decay t); inverse_sqrt
// gamma / sqrt(1 + decay t); exponential gamma * decay^t.
double step_at(const Options& o, double epoch);

struct Result {
  std::vector<float> w;      // model on the scaled features
  double w0 = 0.0;           // intercept on the scaled features
  std::vector<double> coef;  // the same model on the original features
  double intercept = 0.0;
  Scaling scaling;
  std::vector<double> loss_history;      // objective before training and after every epoch (of the
                                         // averaged model in the epochs that average)
  std::vector<double> epoch_seconds;     // training time of every epoch (the loss evaluation excluded)
  std::vector<int64_t> bytes_read;       // bytes of samples, labels and refetched rows read per epoch
  std::vector<double> refetch_fraction;  // per epoch, the fraction of samples refetched
  std::string engine;                    // "float" or "integer"
  std::string isa;                       // kernel variant
  int samples = 0;                       // samples per value in the store (0: fp32)
  int64_t store_bytes = 0;               // bytes of one copy of the store (or of the fp32 data)
  double chebyshev_error = 0.0;          // max |P - l'| on [-range, range] (logistic, double)
};

class Trainer {
 public:
  // x: rows x cols row-major, y: rows. Validates, scales, shuffles and builds the store.
  Trainer(const float* x, const float* y, int64_t rows, int64_t cols, const Options& options);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  Result fit();

  // The gradient a training step computes at (w, w0) on the training rows [r0, r1) (in training
  // order) with copy `copy` (with fresh samples: realisation `copy`) and random stream `step`,
  // without updating anything: its w part and intercept part. For the tests of unbiasedness.
  std::pair<std::vector<double>, double> gradient(const std::vector<float>& w, double w0, int64_t r0, int64_t r1,
                                                  int copy, uint64_t step);
  // The objective on the full-precision (scaled) training data.
  double objective(const std::vector<float>& w, double w0) const;

  const Options& options() const;
  const Scaling& scaling() const;
  const SampleStore* store() const;           // nullptr for fp32
  const AlignedVector<float>& scaled() const;  // rows x cols, training order
  const std::vector<float>& labels() const;   // training order
  const std::vector<int64_t>& order() const;  // training row r is input row order[r]
  Engine engine() const;
  const Chebyshev* chebyshev() const;

  struct Impl;  // the state of a training (linear/solver.cpp)

 private:
  std::unique_ptr<Impl> impl_;
};

// The (scaled-space) model mapped back to the original features: coef, intercept.
std::pair<std::vector<double>, double> unscale(const Scaling& s, const std::vector<float>& w, double w0);

}  // namespace zipml::linear
