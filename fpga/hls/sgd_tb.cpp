// The C-simulation / co-simulation test bench (Vitis HLS csim_design and cosim_design, and ctest):
// runs the top function of each precision on small problems and compares the model after every
// epoch with the bit-exact reference. Compile with -DZIPML_TB_BITS=<1|2|4|8|32> to test one top
// (what run_hls.tcl does: co-simulation wraps the synthesized top only); without it, all five.
// Returns 0 when every model matches.
#include <cstdio>
#include <cstring>
#include <vector>

#include "../host/layout.h"
#include "../reference/sgd_reference.h"
#include "sgd_top.h"

using namespace zipml::fpga;

namespace {

// A small deterministic generator (the test bench must not depend on the host's libraries).
struct SplitMix {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>(next() >> 40) * (2.0f / 16777216.0f) - 1.0f; }  // [-1, 1)
};

using Top = void (*)(const Line*, const Line*, Line*, SgdConfig);

int check(const char* name, Top top, int bits, int64_t rows, int64_t cols, Loss loss, int batch_log2, uint64_t seed) {
  SplitMix rng{seed};
  TrainingData d;
  d.bits = bits;
  d.rows = rows;
  d.cols = cols;
  d.copies = bits == kFloatBits ? 1 : 2;
  std::vector<float> u(static_cast<size_t>(rows * cols)), w(static_cast<size_t>(cols));
  for (float& v : w) v = rng.uniform();
  d.labels.resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double z = 0.0;
    for (int64_t k = 0; k < cols; ++k) z += (u[r * cols + k] = rng.uniform()) * w[k];
    const bool classifier = loss == Loss::Logistic || loss == Loss::L2SVM || loss == Loss::LSSVM;
    d.labels[r] = to_fixed(classifier ? (z > 0 ? 1.0 : -1.0) : 0.1 * z);
  }
  if (bits == kFloatBits)
    d.values = u;
  else
    quantize_double_sampled(u.data(), rows, cols, bits, d.copies, seed, 0, d.codes);

  SgdConfig cfg;
  cfg.rows = static_cast<uint32_t>(rows);
  cfg.cols = static_cast<uint32_t>(cols);
  cfg.epochs = 3;
  cfg.copies = static_cast<uint32_t>(d.copies);
  cfg.batch_log2 = static_cast<uint32_t>(batch_log2);
  cfg.step_shift = 5;
  cfg.loss = static_cast<uint32_t>(loss);
  const std::vector<Line> data = pack_lines(d);
  const std::vector<Line> model_in(static_cast<size_t>(model_lines(cols)), Line{});
  std::vector<Line> model_out(static_cast<size_t>(cfg.epochs * model_lines(cols)), Line{});
  top(data.data(), model_in.data(), model_out.data(), cfg);
  const std::vector<int32_t> got = unpack_models(model_out, cols, cfg.epochs);
  const std::vector<int32_t> want = reference_sgd(d, cfg);
  const bool ok = got == want;
  std::printf("%-14s rows %3lld cols %4lld loss %u batch %3d: %s\n", name, static_cast<long long>(rows),
              static_cast<long long>(cols), static_cast<unsigned>(loss), 1 << batch_log2, ok ? "match" : "MISMATCH");
  return ok ? 0 : 1;
}

int check_top(const char* name, Top top, int bits) {
  int failures = 0;
  const int64_t per_line = bits == kFloatBits ? 16 : 256 / bits;
  const int64_t shapes[] = {3, per_line - 32 / (bits == kFloatBits ? 32 : 2 * bits), 2 * per_line + 5};
  for (int64_t cols : shapes)
    for (int loss = 0; loss < 4; ++loss)
      for (int batch_log2 : {0, 3})
        failures +=
            check(name, top, bits, 37, cols, static_cast<Loss>(loss), batch_log2, 1000 * cols + 10 * loss + batch_log2);
  return failures;
}

}  // namespace

int main() {
  int failures = 0;
#if !defined(ZIPML_TB_BITS) || ZIPML_TB_BITS == 32
  failures += check_top("zipml_sgd_f32", zipml_sgd_f32, kFloatBits);
#endif
#if !defined(ZIPML_TB_BITS) || ZIPML_TB_BITS == 8
  failures += check_top("zipml_sgd_q8", zipml_sgd_q8, 8);
#endif
#if !defined(ZIPML_TB_BITS) || ZIPML_TB_BITS == 4
  failures += check_top("zipml_sgd_q4", zipml_sgd_q4, 4);
#endif
#if !defined(ZIPML_TB_BITS) || ZIPML_TB_BITS == 2
  failures += check_top("zipml_sgd_q2", zipml_sgd_q2, 2);
#endif
#if !defined(ZIPML_TB_BITS) || ZIPML_TB_BITS == 1
  failures += check_top("zipml_sgd_q1", zipml_sgd_q1, 1);
#endif
  std::printf("%s: %d mismatch(es)\n", failures ? "FAIL" : "PASS", failures);
  return failures ? 1 : 0;
}
