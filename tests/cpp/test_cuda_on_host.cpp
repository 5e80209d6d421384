// The CUDA operators of kernels/cuda/quantize_ops.cuh, their kernels included, run on the CPU by
// the emulation of cuda_on_host.h and compared with the CPU operators: the same bits for a seed
// (the fixed-point histogram sums: the same up to the CPU's float64 rounding), the same errors,
// whatever the grid. This is the CPU == CUDA check of every build; on a GPU,
// tests/python/test_cuda.py repeats it with the real thing.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <algorithm>

#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "tensor_assertions.h"
// clang-format off: the emulation must come after every other header and before the kernels
#include "cuda_on_host.h"
#include "kernels/cuda/quantize_ops.cuh"
// clang-format on

namespace {

using zipml::cuda_on_host::HostDevice;
using zipml::testing::bitwise_equal;

constexpr int64_t kStochastic = 0, kNearest = 1;

using LevelSet = std::pair<int64_t, bool>;  // the number of levels; a codebook (else the uniform grid)

at::Generator generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

// The CPU kernel of a zipml device operator, through the dispatcher.
template <class Signature>
c10::TypedOperatorHandle<Signature> cpu_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using FakeQuantizeInto = void(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
                              int64_t, int64_t, int64_t, at::Tensor&);
using QuantizeCodes = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
                                 int64_t, int64_t, int64_t);
using DoubleSampleCodes = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                             const std::optional<at::Tensor>&, int64_t, int64_t,
                                                             int64_t);
using DequantizeCodes = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, int64_t, const at::Tensor&,
                                   const at::Tensor&, at::ScalarType);
using LevelHistogram = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t);
using Pack = at::Tensor(const at::Tensor&, int64_t);
using Absmax = at::Tensor(const at::Tensor&, int64_t);
using Unpack = at::Tensor(const at::Tensor&, int64_t, int64_t);

// The emulated GPU: `multiprocessors` x `resident` blocks in a full wave, so that a grid-stride loop
// over n items makes about n / (256 * multiprocessors * resident) trips. Restored after each test.
class CudaOnHost : public ::testing::Test {
 protected:
  void TearDown() override {
    shape(2, 1);
    HostDevice::shared_bytes_optin = int64_t{227} * 1024;
  }
  static void shape(int multiprocessors, int resident) {
    HostDevice::multiprocessor_count = multiprocessors;
    HostDevice::resident_blocks = resident;
  }
};

// A tensor of numel values: mostly within [-1.5 s, 1.5 s] of a group's scale s (some clip), with
// exact level values, zeros and, if asked, NaN and +-Inf.
at::Tensor sample(int64_t numel, at::ScalarType dtype, uint64_t seed, bool non_finite = false) {
  at::Tensor x = at::rand({numel}, generator(seed), at::kDouble).mul_(3.0).sub_(1.5);
  if (numel > 8) {
    x[1] = 0.0;
    x[2] = 1.0;
    x[3] = -1.0;
  }
  if (non_finite && numel > 8) {
    x[5] = std::nan("");
    x[6] = INFINITY;
    x[7] = -INFINITY;
  }
  return x.to(dtype);
}

// `count` sorted levels in [-1, 1] with both endpoints.
at::Tensor codebook(int64_t count) { return at::linspace(-1.0, 1.0, count, at::kFloat).pow(3); }

// x with its first element dropped: a view whose data is not aligned for 4-element vector access.
at::Tensor misaligned(const at::Tensor& x) {
  at::Tensor padded = at::empty({x.numel() + 1}, x.options());
  padded.narrow(0, 1, x.numel()).copy_(x);
  return padded.narrow(0, 1, x.numel());
}

struct Case {
  at::ScalarType dtype;
  int64_t rounding;
  int64_t levels;  // the number of levels
  bool table;      // a codebook (else the uniform grid)
  int64_t groups;  // scales
};

std::vector<Case> fake_quantize_cases() {
  std::vector<Case> cases;
  for (at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16})
    for (int64_t rounding : {kStochastic, kNearest})
      for (auto [levels, table] : std::vector<LevelSet>{{2, false}, {4, false}, {256, false}, {5, true}, {256, true}})
        for (int64_t groups : {1, 7}) cases.push_back({dtype, rounding, levels, table, groups});
  return cases;
}

// Scales for `groups` groups: positive, but group 3 (if any) has scale 0 and group 5 a negative one
// (invalid: its elements become NaN in fake_quantize, an error in quantize).
at::Tensor scales(int64_t groups, bool invalid) {
  at::Tensor s = at::linspace(0.5, 2.0, groups, at::kFloat);
  if (groups > 3) s[3] = 0.0f;
  if (invalid && groups > 5) s[5] = -1.0f;
  return s;
}

// 7 * 4099 elements: not a multiple of the 4-element item, several trips of the grid-stride loop.
constexpr int64_t kNumel = 7 * 4099;

TEST_F(CudaOnHost, FakeQuantizeHasTheBitsOfTheCpuKernel) {
  const auto cpu = cpu_op<FakeQuantizeInto>("zipml::_fake_quantize_into");
  int index = 0;
  for (const Case& c : fake_quantize_cases()) {
    SCOPED_TRACE(::testing::Message() << c10::toString(c.dtype) << " rounding " << c.rounding << " levels "
                                      << c.levels << (c.table ? " (codebook)" : "") << " groups " << c.groups);
    shape(1 + index % 3, 1);  // 1, 2 or 3 blocks
    const at::Tensor x = sample(kNumel, c.dtype, 100 + index, /*non_finite=*/true);
    const at::Tensor s = scales(c.groups, /*invalid=*/true);
    const std::optional<at::Tensor> table = c.table ? std::optional(codebook(c.levels)) : std::nullopt;
    at::Tensor expected = at::empty_like(x), actual = at::empty_like(x);
    cpu.call(x, s, table, c.levels, c.rounding, 7, 3, expected);
    zipml::cuda::fake_quantize_into<HostDevice>(x, s, table, c.levels, c.rounding, 7, 3, actual);
    EXPECT_TRUE(bitwise_equal(actual, expected));
    if (index % 4 == 0) {  // input and output not aligned for vector access: the element-wise path
      at::Tensor unaligned_out = misaligned(at::zeros_like(x));
      zipml::cuda::fake_quantize_into<HostDevice>(misaligned(x), s, table, c.levels, c.rounding, 7, 3,
                                                  unaligned_out);
      EXPECT_TRUE(bitwise_equal(unaligned_out, expected));
    }
    ++index;
  }
}

TEST_F(CudaOnHost, TheComparisonSeesADifferentSeedOrOffset) {
  // The test above could pass on outputs that ignore the randomness: they must not.
  const at::Tensor x = sample(kNumel, at::kFloat, 1);
  const at::Tensor s = scales(1, false);
  at::Tensor a = at::empty_like(x), b = at::empty_like(x), c = at::empty_like(x);
  zipml::cuda::fake_quantize_into<HostDevice>(x, s, std::nullopt, 16, kStochastic, 7, 3, a);
  zipml::cuda::fake_quantize_into<HostDevice>(x, s, std::nullopt, 16, kStochastic, 8, 3, b);
  zipml::cuda::fake_quantize_into<HostDevice>(x, s, std::nullopt, 16, kStochastic, 7, 4, c);
  EXPECT_FALSE(bitwise_equal(a, b));
  EXPECT_FALSE(bitwise_equal(a, c));
}

TEST_F(CudaOnHost, FakeQuantizeOfANonContiguousTensorIntoANonContiguousOutput) {
  const auto cpu = cpu_op<FakeQuantizeInto>("zipml::_fake_quantize_into");
  const at::Tensor x = sample(64 * 129, at::kFloat, 2).reshape({64, 129}).t();
  at::Tensor expected = at::empty({129, 64}), actual = at::empty({64, 129}).t();
  const at::Tensor s = scales(1, false);
  cpu.call(x, s, std::nullopt, 4, kStochastic, 5, 0, expected);
  zipml::cuda::fake_quantize_into<HostDevice>(x, s, std::nullopt, 4, kStochastic, 5, 0, actual);
  EXPECT_TRUE(bitwise_equal(actual, expected));
}

TEST_F(CudaOnHost, EmptyTensorsLaunchNothing) {
  const at::Tensor x = at::empty({0});
  at::Tensor out = at::empty({0});
  const at::Tensor s = scales(1, false);
  zipml::cuda::fake_quantize_into<HostDevice>(x, s, std::nullopt, 4, kStochastic, 1, 0, out);
  EXPECT_EQ(zipml::cuda::quantize_codes<HostDevice>(x, s, std::nullopt, 4, kStochastic, 1, 0).numel(), 0);
  EXPECT_EQ(zipml::cuda::pack<HostDevice>(at::empty({0}, at::kByte), 3).numel(), 0);
  EXPECT_EQ(zipml::cuda::unpack<HostDevice>(at::empty({0}, at::kByte), 3, 0).numel(), 0);
}

TEST_F(CudaOnHost, QuantizeAndDoubleSampleHaveTheCodesOfTheCpuKernels) {
  const auto cpu_codes = cpu_op<QuantizeCodes>("zipml::_quantize_codes");
  const auto cpu_double = cpu_op<DoubleSampleCodes>("zipml::_double_sample_codes");
  int index = 0;
  for (at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16})
    for (auto [levels, table] : std::vector<LevelSet>{{2, false}, {16, false}, {7, true}, {256, true}})
      for (int64_t groups : {1, 7}) {
        SCOPED_TRACE(::testing::Message() << c10::toString(dtype) << " levels " << levels << " groups " << groups);
        shape(1 + index % 3, 2);
        const at::Tensor x = sample(kNumel, dtype, 200 + index);
        const at::Tensor s = scales(groups, false);
        const std::optional<at::Tensor> book = table ? std::optional(codebook(levels)) : std::nullopt;
        for (int64_t rounding : {kStochastic, kNearest})
          EXPECT_TRUE(bitwise_equal(zipml::cuda::quantize_codes<HostDevice>(x, s, book, levels, rounding, 9, 2),
                                    cpu_codes.call(x, s, book, levels, rounding, 9, 2)));
        const auto [index_actual, up_actual] = zipml::cuda::double_sample_codes<HostDevice>(x, s, book, levels, 9, 2);
        const auto [index_expected, up_expected] = cpu_double.call(x, s, book, levels, 9, 2);
        EXPECT_TRUE(bitwise_equal(index_actual, index_expected));
        EXPECT_TRUE(bitwise_equal(up_actual, up_expected));
        ++index;
      }
}

// Inputs at stochastic rounding's ties, where the tie word decides (probability 2^-16 per element
// in random data): on the 1-bit grid with scale 1, x = -1 + f * 2^-15 has f = frac * 2^16, set at the
// element's draw r, one step either side, or strictly between r and r + 1.
TEST_F(CudaOnHost, TiesOfStochasticRoundingFollowTheTieWord) {
  namespace k = zipml::kernel;
  const auto cpu_codes = cpu_op<QuantizeCodes>("zipml::_quantize_codes");
  const auto cpu_double = cpu_op<DoubleSampleCodes>("zipml::_double_sample_codes");
  constexpr uint64_t kSeed = 12345, kOffset = 6;
  const double steps[] = {-1.0, 0.0, 1.0, 0x1p-9, 0.5, 1.0 - 0x1p-9};
  const int64_t n = 4099;
  at::Tensor x = at::empty({n});
  std::vector<uint8_t> expected(n);
  int tie_ups = 0, ties = 0;
  for (int64_t i = 0; i < n; ++i) {
    const k::ElementDraw d{k::philox_draw(kSeed, kOffset, uint64_t(i)), kSeed, kOffset, uint64_t(i)};
    const double f = std::clamp(d.r + steps[i % 6], 0.0, 65536.0);
    x[i] = float(-1.0 + f * 0x1p-15);  // exact
    expected[i] = uint8_t(k::round_up(float(f * 0x1p-16), k::kStochastic, d));
    if (f > d.r && f < d.r + 1.0) {
      ++ties;
      tie_ups += expected[i];
    }
  }
  ASSERT_GT(tie_ups, 0);
  ASSERT_LT(tie_ups, ties);
  const at::Tensor s = at::ones({1});
  const at::Tensor codes = zipml::cuda::quantize_codes<HostDevice>(x, s, std::nullopt, 2, kStochastic, kSeed, kOffset);
  EXPECT_TRUE(bitwise_equal(codes, at::from_blob(expected.data(), {n}, at::kByte)));
  EXPECT_TRUE(bitwise_equal(codes, cpu_codes.call(x, s, std::nullopt, 2, kStochastic, kSeed, kOffset)));
  const at::Tensor book = at::tensor({-1.0f, 1.0f});
  EXPECT_TRUE(bitwise_equal(zipml::cuda::quantize_codes<HostDevice>(x, s, book, 2, kStochastic, kSeed, kOffset), codes));
  const auto [index_actual, up_actual] = zipml::cuda::double_sample_codes<HostDevice>(x, s, std::nullopt, 2, kSeed, kOffset);
  const auto [index_expected, up_expected] = cpu_double.call(x, s, std::nullopt, 2, kSeed, kOffset);
  EXPECT_TRUE(bitwise_equal(index_actual, index_expected));
  EXPECT_TRUE(bitwise_equal(up_actual, up_expected));
  EXPECT_TRUE(bitwise_equal(up_actual.bitwise_and(1), codes));
}

// The message of the error `call` raises, or "" if it raises none.
template <class Call>
std::string error_of(Call&& call) {
  try {
    call();
  } catch (const c10::Error& e) {
    return e.msg();
  }
  return "";
}

TEST_F(CudaOnHost, BadInputRaisesTheErrorOfTheCpuKernel) {
  const at::Tensor x = sample(kNumel, at::kFloat, 3, /*non_finite=*/true);
  const at::Tensor s = scales(1, false);
  const auto cpu_codes = cpu_op<QuantizeCodes>("zipml::_quantize_codes");
  const auto cpu_double = cpu_op<DoubleSampleCodes>("zipml::_double_sample_codes");
  const std::string quantize_error = error_of([&] { cpu_codes.call(x, s, std::nullopt, 4, kStochastic, 1, 0); });
  EXPECT_NE(quantize_error, "");
  EXPECT_EQ(error_of([&] { zipml::cuda::quantize_codes<HostDevice>(x, s, std::nullopt, 4, kStochastic, 1, 0); }),
            quantize_error);
  const std::string double_error = error_of([&] { cpu_double.call(x, s, std::nullopt, 4, 1, 0); });
  EXPECT_NE(double_error, "");
  EXPECT_EQ(error_of([&] { zipml::cuda::double_sample_codes<HostDevice>(x, s, std::nullopt, 4, 1, 0); }),
            double_error);
  // A finite x with an invalid scale in one group is bad input too.
  const at::Tensor finite = sample(kNumel, at::kFloat, 3);
  EXPECT_NE(error_of([&] { zipml::cuda::quantize_codes<HostDevice>(finite, scales(7, true), std::nullopt, 4,
                                                                   kNearest, 1, 0); }),
            "");

  const auto cpu_dequantize = cpu_op<DequantizeCodes>("zipml::_dequantize_codes");
  at::Tensor codes = at::randint(0, 4, {1001}, generator(6), at::kByte);
  codes[1000] = 4;  // one past the last of 4 levels
  const at::Tensor table = codebook(4);
  const std::string dequantize_error =
      error_of([&] { cpu_dequantize.call(codes, std::nullopt, 0, s, table, at::kFloat); });
  EXPECT_NE(dequantize_error, "");
  EXPECT_EQ(error_of([&] { zipml::cuda::dequantize_codes<HostDevice>(codes, std::nullopt, 0, s, table, at::kFloat); }),
            dequantize_error);

  const auto cpu_pack = cpu_op<Pack>("zipml::_pack");
  at::Tensor wide = at::zeros({999}, at::kByte);
  wide[998] = 8;  // needs 4 bits
  const std::string pack_error = error_of([&] { cpu_pack.call(wide, 3); });
  EXPECT_NE(pack_error, "");
  EXPECT_EQ(error_of([&] { zipml::cuda::pack<HostDevice>(wide, 3); }), pack_error);
}

TEST_F(CudaOnHost, DequantizeHasTheValuesOfTheCpuKernel) {
  const auto cpu = cpu_op<DequantizeCodes>("zipml::_dequantize_codes");
  shape(3, 1);
  for (int64_t groups : {1, 7}) {
    const at::Tensor s = scales(groups, /*invalid=*/true);
    const at::Tensor table = codebook(8);
    const at::Tensor codes = at::randint(0, 7, {kNumel}, generator(7), at::kByte);  // + an up bit stays < 8
    const at::Tensor up = at::randint(0, 4, {kNumel}, generator(8), at::kByte);
    for (at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
      SCOPED_TRACE(::testing::Message() << c10::toString(dtype) << " groups " << groups);
      EXPECT_TRUE(bitwise_equal(zipml::cuda::dequantize_codes<HostDevice>(codes, std::nullopt, 0, s, table, dtype),
                                cpu.call(codes, std::nullopt, 0, s, table, dtype)));
      for (int64_t bit : {0, 1})
        EXPECT_TRUE(bitwise_equal(zipml::cuda::dequantize_codes<HostDevice>(codes, up, bit, s, table, dtype),
                                  cpu.call(codes, up, bit, s, table, dtype)));
      EXPECT_TRUE(bitwise_equal(
          zipml::cuda::dequantize_codes<HostDevice>(misaligned(codes), misaligned(up), 1, s, table, dtype),
          cpu.call(codes, up, 1, s, table, dtype)));
    }
  }
}

TEST_F(CudaOnHost, PackAndUnpackHaveTheBytesOfTheCpuKernels) {
  const auto cpu_pack = cpu_op<Pack>("zipml::_pack");
  const auto cpu_unpack = cpu_op<Unpack>("zipml::_unpack");
  for (int64_t bits = 1; bits <= 8; ++bits)
    for (int64_t numel : {1, 7, 1001, 8 * 256 * 3 + 5}) {
      SCOPED_TRACE(::testing::Message() << bits << " bits, " << numel << " codes");
      shape(1 + static_cast<int>(bits % 2), 1);
      const at::Tensor codes = at::randint(0, 1 << bits, {numel}, generator(bits * 10000 + numel), at::kByte);
      const at::Tensor packed = zipml::cuda::pack<HostDevice>(codes, bits);
      EXPECT_TRUE(bitwise_equal(packed, cpu_pack.call(codes, bits)));
      EXPECT_TRUE(bitwise_equal(zipml::cuda::unpack<HostDevice>(packed, bits, numel), codes));
      EXPECT_TRUE(bitwise_equal(zipml::cuda::unpack<HostDevice>(packed, bits, numel),
                                cpu_unpack.call(packed, bits, numel)));
    }
}

// The max-abs scale: the CPU's bits, NaN payloads included, for runs shorter than a block (a thread
// each, in grid-stride loops of several trips), runs of one block's length and of several pieces
// (merged by atomicMax in whatever order the blocks finish), one block looping over every piece, and
// runs with a NaN, an Inf or neither.
TEST_F(CudaOnHost, AbsmaxHasTheBitsOfTheCpuKernel) {
  const auto cpu_absmax = cpu_op<Absmax>("zipml::_absmax");
  const std::vector<std::pair<int64_t, int64_t>> runs{{1, 1}, {1, 3 * 4096 + 5}, {7, 4099}, {3, 256}, {1500, 3},
                                                      {4, 0}};
  for (at::ScalarType dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16})
    for (auto [groups, inner] : runs)
      for (auto [multiprocessors, resident] : std::vector<std::pair<int, int>>{{1, 1}, {2, 3}}) {
        if (dtype != at::kFloat && multiprocessors == 1) continue;  // the grids once, the dtypes once
        SCOPED_TRACE(::testing::Message() << dtype << ", " << groups << " runs of " << inner << ", grid "
                                          << multiprocessors << " x " << resident);
        shape(multiprocessors, resident);
        at::Tensor x = sample(groups * inner, dtype, static_cast<uint64_t>(groups * inner), /*non_finite=*/true);
        if (groups == 7) x[2 * inner + 10] = -INFINITY;  // run 0 has a NaN (and Infs), run 2 an Inf alone
        EXPECT_TRUE(bitwise_equal(zipml::cuda::absmax<HostDevice>(x, groups), cpu_absmax.call(x, groups)));
      }
  const at::Tensor ten = at::ones({10});
  const std::string error = error_of([&] { cpu_absmax.call(ten, 3); });
  EXPECT_NE(error, "");
  EXPECT_EQ(error_of([&] { zipml::cuda::absmax<HostDevice>(ten, 3); }), error);
}

// The histogram of optimal_levels: counts and range exactly as on the CPU; sums within the CPU's
// rounding: a float64 sum of n values of magnitude <= 1, in any order, errs by at most
// (n - 1) * 2^-53 * n (the fixed-point sums are exact to 2^-72 per value, then rounded once).
void expect_histogram_matches_cpu(const at::Tensor& x, const at::Tensor& s, int64_t bins,
                                  const std::tuple<at::Tensor, at::Tensor>& actual) {
  const auto [expected_stats, expected_range] =
      cpu_op<LevelHistogram>("zipml::_level_histogram").call(x, s, bins);
  const auto& [stats, range] = actual;
  ASSERT_EQ(stats.sizes(), expected_stats.sizes());
  EXPECT_TRUE(bitwise_equal(range, expected_range));
  EXPECT_TRUE(bitwise_equal(stats.select(1, 0), expected_stats.select(1, 0)));
  const at::Tensor n = expected_stats.select(1, 0);
  const at::Tensor tolerance = n * n * std::ldexp(1.0, -53) + n * std::ldexp(1.0, -72) + std::ldexp(1.0, -80);
  EXPECT_TRUE((stats.select(1, 1) - expected_stats.select(1, 1)).abs().le(tolerance).all().item<bool>()) << "sums";
}

TEST_F(CudaOnHost, LevelHistogramMatchesTheCpuAndIsTheSameForEveryGrid) {
  // Values that clip (the range is -1 to 1, reached by many), then values of at most 0.45 against a
  // scale of 0.5, none clipping (the range is reached by one element each: it tests the block
  // reductions).
  for (auto [groups, spread] : std::vector<std::pair<int64_t, double>>{{1, 1.0}, {7, 1.0}, {1, 0.3}}) {
    const at::Tensor x = sample(kNumel, at::kFloat, 4).mul_(spread);
    const at::Tensor s = scales(groups, false);
    for (int64_t bins : {1, 64, 1024}) {
      SCOPED_TRACE(::testing::Message() << bins << " bins, groups " << groups << ", spread " << spread);
      std::optional<std::tuple<at::Tensor, at::Tensor>> first;
      for (auto [multiprocessors, resident] : std::vector<std::pair<int, int>>{{1, 1}, {2, 2}, {5, 1}}) {
        shape(multiprocessors, resident);
        for (int64_t optin : {int64_t{227} * 1024, int64_t{4} * 1024}) {  // bins in shared memory, or not
          HostDevice::shared_bytes_optin = optin;
          HostDevice::launches.clear();
          const auto result = zipml::cuda::level_histogram<HostDevice>(x, s, bins);
          ASSERT_EQ(HostDevice::launches.size(), 2u);  // the histogram, then the stats of its bins
          // 4 int64 accumulators per bin in shared memory when they fit (with 1 KiB for the rest)
          const size_t accumulators = 4 * 8 * bins;
          EXPECT_EQ(HostDevice::launches[0].shared_bytes, accumulators + 1024 <= optin ? accumulators : 0);
          // one wave of at most 2 blocks per multiprocessor, or one block per 256 items if fewer
          const int needed = static_cast<int>((zipml::cuda::items_of(kNumel) + 255) / 256);
          EXPECT_EQ(HostDevice::launches[0].grid, std::min(multiprocessors * std::min(resident, 2), needed));
          if (!first) {
            expect_histogram_matches_cpu(x, s, bins, result);
            first = result;
          } else {  // integer sums: no grid, block order or memory changes a bit
            EXPECT_TRUE(bitwise_equal(std::get<0>(result), std::get<0>(*first)));
            EXPECT_TRUE(bitwise_equal(std::get<1>(result), std::get<1>(*first)));
          }
        }
      }
    }
  }
  for (at::ScalarType dtype : {at::kDouble, at::kHalf, at::kBFloat16}) {  // the other input types
    SCOPED_TRACE(c10::toString(dtype));
    const at::Tensor x = sample(kNumel, dtype, 6);
    const at::Tensor s = scales(7, false);
    expect_histogram_matches_cpu(x, s, 64, zipml::cuda::level_histogram<HostDevice>(x, s, 64));
  }
  const at::Tensor bad = sample(kNumel, at::kFloat, 5, /*non_finite=*/true);
  EXPECT_NE(error_of([&] { zipml::cuda::level_histogram<HostDevice>(bad, scales(1, false), 64); }), "");
}

// The emulation itself: a barrier orders shared-memory writes before reads, and a butterfly of
// shuffles reduces a warp.
__global__ void rotate_through_shared(const int* in, int* out) {
  __shared__ int slots[256];
  slots[threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = slots[(threadIdx.x + 1) % blockDim.x];
}

__global__ void warp_sums(const int* in, int* out) {
  int v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int delta = 16; delta > 0; delta >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, delta);
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

TEST(CudaOnHostEmulation, BarriersAndShufflesBehaveAsOnAGpu) {
  const at::Tensor in = at::randint(0, 1000, {3, 256}, generator(9), at::kInt);
  at::Tensor rotated = at::empty_like(in), sums = at::empty_like(in);
  zipml::cuda_on_host::launch(rotate_through_shared, 3, 256, 0, in.const_data_ptr<int>(),
                              rotated.mutable_data_ptr<int>());
  EXPECT_TRUE(bitwise_equal(rotated, in.roll(-1, 1)));
  zipml::cuda_on_host::launch(warp_sums, 3, 256, 0, in.const_data_ptr<int>(), sums.mutable_data_ptr<int>());
  EXPECT_TRUE(bitwise_equal(sums, in.reshape({3, 8, 32}).sum(2, true, at::kInt).expand({3, 8, 32}).reshape({3, 256})));
}

}  // namespace
