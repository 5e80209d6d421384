// GoogleTest suite of the linear solvers (linear/), free of torch and Python: the store against
// the core's per-element definition, the kernel variants against each other, the unbiasedness of
// double sampling, training, and the errors of bad input.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../../../kernels/common/philox.h"
#include "../../../kernels/common/quantize.h"
#include "dataset.h"
#include "kernels.h"
#include "solver.h"
#include "store.h"
#include "team.h"

namespace zl = zipml::linear;
namespace zk = zipml::kernel;

namespace {

std::vector<float> uniform_data(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> u(rows * cols);
  for (float& v : u) v = dist(gen);
  return u;
}

// Stochastic rounding of v on the uniform grid of 2^bits levels, from the definition (ZipML
// Section 2): the interval by linear scan, round up iff u < frac for the uniform u = (r + w 2^-32)
// 2^-16 of element `index` (r its 16-bit draw, w its tie word), compared exactly as u 2^48 < frac 2^48.
int reference_code(float v, int bits, uint64_t seed, uint64_t stream, uint64_t index) {
  const int k = 1 << bits;
  const zk::Levels grid{nullptr, k};
  int j = 0;
  while (j + 1 < k - 1 && grid.at(j + 1) <= v) ++j;
  const float t = (v + 1.0f) * (0.5f * static_cast<float>(k - 1));
  const float frac = t - static_cast<float>(static_cast<int>(t) < k - 2 ? static_cast<int>(t) : k - 2);
  const double u48 = std::ldexp(static_cast<double>(zk::philox_draw(seed, stream, index)), 32) +
                     static_cast<double>(zk::philox_tie_word(seed, stream, index));
  return j + (u48 < std::ldexp(static_cast<double>(frac), 48) ? 1 : 0);
}

}  // namespace

TEST(Store, SamplesFollowTheCoresDefinition) {
  const int64_t rows = 13, cols = 37;
  const std::vector<float> u = uniform_data(rows, cols, 1);
  for (int bits : {1, 2, 3, 4, 8}) {
    const zl::SampleStore s =
        zl::SampleStore::build(u.data(), rows, cols, zl::FeatureLevels::make_uniform(bits), 2, 3, false, 77, 2);
    EXPECT_EQ(s.record_bytes(), 40 * ((bits == 1 ? 0 : bits) + 2) / 8);
    for (int copy = 0; copy < 3; ++copy)
      for (int sample = 0; sample < 2; ++sample)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) {
            const int want = reference_code(u[r * cols + c], bits, 77, copy * 2 + sample, r * cols + c);
            ASSERT_EQ(s.code(copy, r, c, sample), want)
                << "bits " << bits << " copy " << copy << " sample " << sample;
          }
  }
}

// Values that tie sample 1 of copy 1 (stream 3): on the 1-bit grid u = -1 + k 2^-23 has frac =
// k 2^-24 exactly, and k = 256 r + m (0 < m < 256) puts frac * 2^16 strictly between the element's
// draw r and r + 1, where the draw alone would round down and the tie word rounds up with
// probability m / 256. 300 columns: the SIMD draws too.
TEST(Store, TiedDrawsReadTheTieWord) {
  const int64_t rows = 3, cols = 300, n = rows * cols;
  std::vector<float> u(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = 256 * static_cast<int64_t>(zk::philox_draw(77, 3, i)) + 1 + i % 255;
    u[i] = static_cast<float>(-1.0 + std::ldexp(static_cast<double>(k), -23));
  }
  const zl::SampleStore s =
      zl::SampleStore::build(u.data(), rows, cols, zl::FeatureLevels::make_uniform(1), 2, 2, false, 77, 2);
  int ups = 0;
  for (int copy = 0; copy < 2; ++copy)
    for (int sample = 0; sample < 2; ++sample)
      for (int64_t i = 0; i < n; ++i) {
        const int code = s.code(copy, i / cols, i % cols, sample);
        ASSERT_EQ(code, reference_code(u[i], 1, 77, copy * 2 + sample, i)) << "copy " << copy << " sample " << sample;
        if (copy == 1 && sample == 1) ups += code;
      }
  EXPECT_GT(ups, 0);
  EXPECT_LT(ups, n);
}

TEST(Store, PanelsHoldTheSameSamples) {
  const int64_t rows = 7, cols = 200;
  const std::vector<float> u = uniform_data(rows, cols, 4);
  for (int bits : {1, 2, 3, 4, 8}) {
    const auto build = [&](const std::vector<int64_t>& starts) {
      return zl::SampleStore::build(u.data(), rows, cols, zl::FeatureLevels::make_uniform(bits), 2, 2, false, 5, 1,
                                    starts);
    };
    const zl::SampleStore one = build({});
    for (const std::vector<int64_t>& starts : {std::vector<int64_t>{64, 128}, std::vector<int64_t>{192}}) {
      const zl::SampleStore cut = build(starts);
      ASSERT_EQ(cut.panels(), static_cast<int>(starts.size()) + 1);
      int64_t record_bytes = 0;
      for (int p = 0; p < cut.panels(); ++p) record_bytes += cut.panel_record_bytes(p);
      EXPECT_EQ(cut.record_bytes(), record_bytes);
      for (int copy = 0; copy < 2; ++copy)
        for (int sample = 0; sample < 2; ++sample)
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t c = 0; c < cols; ++c)
              ASSERT_EQ(cut.code(copy, r, c, sample), one.code(copy, r, c, sample)) << "bits " << bits << " col " << c;
            for (auto [c0, c1] : {std::pair<int64_t, int64_t>{0, cols}, {64, 128}, {30, 170}, {128, 200}}) {
              std::vector<float> a(c1 - c0), b(c1 - c0);
              one.decode_values(copy, r, sample, c0, c1, a.data());
              cut.decode_values(copy, r, sample, c0, c1, b.data());
              ASSERT_EQ(a, b) << "bits " << bits << " features " << c0 << ".." << c1;
            }
          }
    }
  }
  for (const std::vector<int64_t>& bad : {std::vector<int64_t>{100}, {128, 64}, {64, 64}, {0}, {256}})
    EXPECT_THROW(zl::SampleStore::build(u.data(), rows, cols, zl::FeatureLevels::make_uniform(4), 2, 1, false, 5, 1,
                                        bad),
                 zl::InputError);
}

TEST(Team, BarrierKeepsEveryThreadInStep) {
  // Every thread publishes its round before the barrier and checks the others' after it; one round
  // makes the others wait long enough to sleep.
  const int threads = 3, rounds = 3000;
  std::vector<std::atomic<int>> reached(threads);
  zl::Barrier barrier(threads);
  std::atomic<int> errors{0};
  zl::run_team(threads, [&](int tid) {
    for (int round = 1; round <= rounds; ++round) {
      if (tid == round % threads && round % 1000 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(30));
      reached[tid].store(round);
      barrier.wait(tid);
      for (int t = 0; t < threads; ++t)
        if (reached[t].load() < round) ++errors;
      barrier.wait(tid);  // nobody starts the next round before everyone has checked this one
    }
  });
  EXPECT_EQ(errors.load(), 0);
}

TEST(Kernels, VariantsAgreeWithTheScalarReference) {
  const int64_t rows = 8, cols = 200;
  const std::vector<float> u = uniform_data(rows, cols, 2);
  std::mt19937 gen(3);
  std::vector<int8_t> m(256, 0);
  for (int64_t j = 0; j < cols; ++j) m[j] = static_cast<int8_t>(static_cast<int>(gen() % 255) - 127);
  const int8_t t[8] = {5, -7, 127, -127, 0, 1, -1, 64};
  std::vector<const zl::Kernels*> variants{&zl::scalar_kernels()};
  if (zl::avx2_kernels()) variants.push_back(zl::avx2_kernels());
  if (zl::avx512_kernels()) variants.push_back(zl::avx512_kernels());
  for (int bits : {1, 2, 4, 8}) {
    const zl::SampleStore s =
        zl::SampleStore::build(u.data(), rows, cols, zl::FeatureLevels::make_uniform(bits), 2, 1, false, 9, 1);
    std::vector<const uint8_t*> index, up;
    for (int64_t r = 0; r < rows; ++r) {
      index.push_back(s.index_plane(0, r));
      up.push_back(s.up_plane(0, r, 1));
    }
    for (const zl::Kernels* k : variants) {
      for (int64_t r = 0; r < rows; ++r) {
        int64_t want = 0;
        for (int64_t c = 64; c < cols; ++c) want += s.code(0, r, c, 1) * m[c];
        EXPECT_EQ(k->int_dot(index[r], up[r], m.data(), 64, cols, bits), want) << k->name << " bits " << bits;
      }
      std::vector<int32_t> G(256);  // c1 - c0 rounded up to 64
      k->int_gemv_t(index.data(), up.data(), t, rows, 0, cols, bits, G.data());
      for (int64_t c = 0; c < cols; ++c) {
        int32_t want = 0;
        for (int64_t r = 0; r < rows; ++r) want += s.code(0, r, c, 1) * t[r];
        ASSERT_EQ(G[c], want) << k->name << " bits " << bits << " col " << c;
      }
    }
  }
  const std::vector<float> v = uniform_data(1, 300, 4);
  std::vector<float> ref_f(300), f(300);
  std::vector<int8_t> ref_i(300), i8(300);
  const int64_t ref_sum =
      zl::scalar_kernels().quantize_symmetric(v.data(), 0, 300, 0.9f, 8, 5, 6, ref_f.data(), ref_i.data());
  for (const zl::Kernels* k : variants) {
    EXPECT_EQ(k->quantize_symmetric(v.data(), 0, 300, 0.9f, 8, 5, 6, f.data(), i8.data()), ref_sum) << k->name;
    EXPECT_EQ(f, ref_f) << k->name;
    EXPECT_EQ(i8, ref_i) << k->name;
    EXPECT_EQ(k->dot(v.data(), ref_f.data(), 300), zl::scalar_kernels().dot(v.data(), ref_f.data(), 300)) << k->name;
  }
  // Draws that tie (as in TiedDrawsReadTheTieWord, on the 3 levels of 2 bits at scale 1: frac =
  // k 2^-24 for v = -1 + k 2^-24), over [5, 295): an unaligned start and a short tail.
  std::vector<float> tied(300);
  for (int64_t j = 0; j < 300; ++j) {
    const int64_t k = 256 * static_cast<int64_t>(zk::philox_draw(5, 6, j)) + 1 + j % 255;
    tied[j] = static_cast<float>(-1.0 + std::ldexp(static_cast<double>(k), -24));
  }
  const int64_t tied_sum =
      zl::scalar_kernels().quantize_symmetric(tied.data(), 5, 295, 1.0f, 2, 5, 6, ref_f.data(), ref_i.data());
  EXPECT_GT(tied_sum, -290);  // some round up from -1 to 0
  for (const zl::Kernels* k : variants) {
    EXPECT_EQ(k->quantize_symmetric(tied.data(), 5, 295, 1.0f, 2, 5, 6, f.data(), i8.data()), tied_sum) << k->name;
    EXPECT_EQ(f, ref_f) << k->name;
    EXPECT_EQ(i8, ref_i) << k->name;
  }
}

TEST(Solver, DoubleSampledGradientIsUnbiasedAndNaiveIsNot) {
  const int64_t cols = 8, draws = 3000;
  const std::vector<float> a = uniform_data(1, cols, 5);
  const float y = 0.25f;
  std::vector<float> w(cols);
  for (int64_t j = 0; j < cols; ++j) w[j] = 1.5f * a[(j + 3) % cols];
  double residual = -y;
  for (int64_t j = 0; j < cols; ++j) residual += static_cast<double>(a[j]) * w[j];
  auto worst_z = [&](zl::Sampling sampling) {
    zl::Options o;
    o.sampling = sampling;
    o.bits = 2;
    o.copies = draws;
    o.scale = false;
    o.batch_size = 1;
    o.fit_intercept = false;
    zl::Trainer t(a.data(), &y, 1, cols, o);
    std::vector<double> sum(cols, 0.0), sum_sq(cols, 0.0);
    for (int c = 0; c < draws; ++c) {
      const std::vector<double> g = t.gradient(w, 0.0, 0, 1, c, 0).first;
      for (int64_t j = 0; j < cols; ++j) {
        sum[j] += g[j];
        sum_sq[j] += g[j] * g[j];
      }
    }
    double worst = 0.0;
    for (int64_t j = 0; j < cols; ++j) {
      const double mean = sum[j] / draws, var = sum_sq[j] / draws - mean * mean;
      worst = std::max(worst, std::fabs(mean - a[j] * residual) / std::sqrt(var / draws + 1e-30));
    }
    return worst;
  };
  EXPECT_LT(worst_z(zl::Sampling::Double), 5.0);
  EXPECT_GT(worst_z(zl::Sampling::Naive), 10.0);
}

TEST(Solver, DoubleSamplingReachesTheFp32Loss) {
  const int64_t rows = 1500, cols = 10;
  std::mt19937 gen(6);
  std::normal_distribution<float> normal;
  std::vector<float> x(rows * cols), y(rows);
  for (float& v : x) v = normal(gen);
  for (int64_t r = 0; r < rows; ++r) {
    y[r] = normal(gen);
    for (int64_t c = 0; c < cols; ++c) y[r] += (c % 3 - 1.0f) * x[r * cols + c];
  }
  zl::Options o;
  o.epochs = 20;
  o.batch_size = 8;
  o.step_size = 0.1;
  o.schedule = zl::Schedule::Inverse;
  o.decay = 0.5;
  o.copies = 8;
  o.sampling = zl::Sampling::FP32;
  const double fp32 = zl::Trainer(x.data(), y.data(), rows, cols, o).fit().loss_history.back();
  o.sampling = zl::Sampling::Double;
  o.bits = 3;
  const zl::Result r = zl::Trainer(x.data(), y.data(), rows, cols, o).fit();
  EXPECT_LT(r.loss_history.back(), 1.01 * fp32);
  EXPECT_EQ(r.loss_history.size(), 21u);
  EXPECT_EQ(r.bytes_read[0], rows * (16 * 5 / 8 + 4));
}

TEST(Input, ErrorsNameTheArgumentOrFileAndLine) {
  const float x[4] = {1, 2, NAN, 4}, y[2] = {1, -1};
  EXPECT_THROW(zl::Trainer(x, y, 2, 2, zl::Options()), zl::InputError);
  try {
    zl::Trainer(x, y, 2, 2, zl::Options());
  } catch (const zl::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("X contains NaN or Inf (at row 1, column 0)"), std::string::npos);
  }
  const float ok[4] = {1, 2, 3, 4}, bad_labels[2] = {0.5f, 1};
  zl::Options o;
  o.loss = zl::Loss::Hinge;
  EXPECT_THROW(zl::Trainer(ok, bad_labels, 2, 2, o), zl::InputError);
  o = zl::Options();
  o.bits = 9;
  EXPECT_THROW(zl::Trainer(ok, y, 2, 2, o), zl::InputError);
  EXPECT_THROW(zl::Trainer(ok, y, 0, 2, zl::Options()), zl::InputError);

  const std::string path = testing::TempDir() + "zipml_linear_bad.svm";
  std::ofstream(path) << "1 1:0.5\n-1 3:2 2:1\n";
  try {
    zl::read_libsvm(path);
    FAIL() << "no error";
  } catch (const zl::InputError& e) {
    EXPECT_EQ(std::string(e.what()), path + ":2: feature indices must be ascending, got 2 after 3");
  }
  const std::string csv = testing::TempDir() + "zipml_linear_bad.csv";
  std::ofstream(csv) << "a,b,y\n1,2,3\n4,5\n";
  try {
    zl::read_csv(csv);
    FAIL() << "no error";
  } catch (const zl::InputError& e) {
    EXPECT_EQ(std::string(e.what()), csv + ":3: expected 3 fields, found 2");
  }
  EXPECT_THROW(zl::read_libsvm(testing::TempDir() + "absent.svm"), zl::FileError);
  std::remove(path.c_str());
  std::remove(csv.c_str());
}
