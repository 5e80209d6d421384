// The zipml device operators (schemas in csrc/ops/schemas.cpp) over the kernels of
// quantize_kernels.cuh, with the semantics of the CPU drivers in kernels/cpu/quantize_cpu.cpp and
// the bits of their per-element math (kernels/common/*.h, built with --fmad=false): CPU and CUDA
// agree bit for bit for a seed.
//
// Each operator is a template over a Device, the runtime that runs the kernels:
//   Device::Guard                         constructed from an at::Device, makes it current;
//   Device::multiprocessors()             multiprocessors of the current device;
//   Device::blocks_per_multiprocessor(kernel, threads, shared_bytes)
//                                         blocks of `kernel` resident at once on one of them;
//   Device::shared_bytes_per_block_optin()  the most shared memory a block may opt in to;
//   Device::opt_in_shared_bytes(kernel, bytes)  lets `kernel` use that many dynamic bytes;
//   Device::launch(kernel, grid, threads, shared_bytes, args...)
//                                         runs kernel<<<grid, threads, shared_bytes>>>(args...) on
//                                         the current stream and checks the launch.
// quantize_cuda.cu instantiates them with the CUDA runtime and registers them for CUDA tensors;
// the tests also instantiate them with a CPU emulation of the kernels (tests/cpp/cuda_on_host.h).
//
// Every kernel is a grid-stride loop with its grid capped at one resident wave. Ops that must
// report bad input (quantize, double_sample on NaN/Inf or an invalid scale, dequantize on an
// out-of-range code, pack on a code that does not fit) raise a device flag and read it back after
// the kernel: they synchronise. fake_quantize never does: it propagates NaN instead.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>

#include "quantize_kernels.cuh"

namespace zipml::cuda {
namespace {

constexpr size_t kDefaultSharedBytes = 48 * 1024;  // dynamic shared memory a kernel gets without opting in
constexpr int kHistogramBlocksPerSM = 2;
constexpr int64_t kStaticSharedAllowance = 1024;  // >= the static shared memory of a kernel here

// ---- launch helpers ------------------------------------------------------------------------------

// Blocks for a grid-stride loop of `kernel` over `items` work items, one per thread: as many as can
// be resident on the device at once (one wave, so no multiprocessor idles at the end; at most
// max_per_sm per multiprocessor), or fewer.
template <class Device, class Kernel>
int grid_for(Kernel kernel, int64_t items, size_t shared_bytes = 0, int max_per_sm = 1 << 30) {
  const int per_sm = Device::blocks_per_multiprocessor(kernel, kThreads, shared_bytes);
  const int64_t resident = static_cast<int64_t>(Device::multiprocessors()) * std::max(1, std::min(per_sm, max_per_sm));
  const int64_t needed = (items + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min(needed, resident)));
}

bool aligned_for_vec4(const void* p, size_t element_size) {
  return reinterpret_cast<uintptr_t>(p) % (4 * element_size) == 0;
}

// A device int set to 1 by any thread that meets bad input, read back (synchronising) by the host.
class ErrorFlag {
 public:
  explicit ErrorFlag(const at::Tensor& like) : flag_(at::zeros({1}, like.options().dtype(at::kInt))) {}
  int* get() { return flag_.mutable_data_ptr<int>(); }
  bool raised() const { return flag_.item<int>() != 0; }

 private:
  at::Tensor flag_;
};

void check_device(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

// The scale groups of a contiguous tensor of `numel` elements with scale.numel() groups.
ScaleGroups groups_of(const at::Tensor& scale, int64_t numel, const char* op) {
  TORCH_CHECK(scale.scalar_type() == at::kFloat, op, ": scale must be float32, got ", scale.scalar_type());
  const int64_t groups = scale.numel();
  TORCH_CHECK(groups >= 1 && numel % groups == 0, op, ": ", groups, " scales do not divide ", numel,
              " elements into equal groups");
  return ScaleGroups{scale.const_data_ptr<float>(), numel / groups,
                     numel <= static_cast<int64_t>(std::numeric_limits<uint32_t>::max())};
}

// The levels of a quantizer: a float32 codebook of num_levels entries on x's device, or the uniform grid.
kernel::Levels levels_of(const std::optional<at::Tensor>& table, int64_t num_levels, const at::Tensor& x,
                         const char* op) {
  TORCH_CHECK(num_levels >= 1 && num_levels <= kMaxLevels, op, ": num_levels must be 1 to ", kMaxLevels, ", got ",
              num_levels);
  if (!table || !table->defined()) {
    TORCH_CHECK(num_levels >= 2, op, ": the uniform grid needs at least 2 levels, got ", num_levels);
    return kernel::Levels{nullptr, static_cast<int>(num_levels)};
  }
  check_device(*table, x, op, "the codebook");
  TORCH_CHECK(table->scalar_type() == at::kFloat && table->is_contiguous() && table->numel() == num_levels, op,
              ": the codebook must be a contiguous float32 tensor of num_levels = ", num_levels, " entries");
  return kernel::Levels{table->const_data_ptr<float>(), static_cast<int>(num_levels)};
}

QuantizeParams params_of(const at::Tensor& x, const at::Tensor& scale, const std::optional<at::Tensor>& table,
                         int64_t num_levels, int64_t rounding, int64_t seed, int64_t offset, const char* op) {
  TORCH_CHECK(rounding == kernel::kStochastic || rounding == kernel::kNearest, op,
              ": rounding must be 0 (stochastic) or 1 (nearest), got ", rounding);
  check_device(scale, x, op, "scale");
  QuantizeParams p;
  p.groups = groups_of(scale, x.numel(), op);
  p.levels = levels_of(table, num_levels, x, op);
  p.rounding = static_cast<int>(rounding);
  p.seed = static_cast<uint64_t>(seed);
  p.offset = static_cast<uint64_t>(offset);
  p.numel = x.numel();
  return p;
}

// ---- operators, one template per op over the Device (see the top of the file) -------------------

template <class Device>
void fake_quantize_into(const at::Tensor& x_in, const at::Tensor& scale_in, const std::optional<at::Tensor>& table,
                        int64_t num_levels, int64_t rounding, int64_t seed, int64_t offset, at::Tensor& out) {
  const char* op = "fake_quantize";
  const typename Device::Guard guard(x_in.device());
  check_device(out, x_in, op, "out");
  TORCH_CHECK(out.scalar_type() == x_in.scalar_type() && out.sizes() == x_in.sizes(), op,
              ": out must have the dtype and shape of x");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  at::Tensor dst = out.is_contiguous() ? out : at::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() > 0) {
    const QuantizeParams p = params_of(x, scale, table, num_levels, rounding, seed, offset, op);
    const int64_t items = items_of(x.numel());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zipml_fake_quantize_cuda", [&] {
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      scalar_t* outp = dst.mutable_data_ptr<scalar_t>();
      const bool aligned = aligned_for_vec4(xp, sizeof(scalar_t)) && aligned_for_vec4(outp, sizeof(scalar_t));
      const auto kernel_fn = fake_quantize_kernel<scalar_t>;
      Device::launch(kernel_fn, grid_for<Device>(kernel_fn, items), kThreads, 0, xp, outp, aligned, p);
    });
  }
  if (!dst.is_same(out)) out.copy_(dst);
}

template <class Device>
at::Tensor quantize_codes(const at::Tensor& x_in, const at::Tensor& scale_in, const std::optional<at::Tensor>& table,
                          int64_t num_levels, int64_t rounding, int64_t seed, int64_t offset) {
  const char* op = "quantize";
  const typename Device::Guard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  at::Tensor codes = at::empty(x.sizes(), x.options().dtype(at::kByte));
  if (x.numel() == 0) return codes;
  const QuantizeParams p = params_of(x, scale, table, num_levels, rounding, seed, offset, op);
  const int64_t items = items_of(x.numel());
  ErrorFlag bad(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zipml_quantize_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    uint8_t* cp = codes.mutable_data_ptr<uint8_t>();
    const bool aligned = aligned_for_vec4(xp, sizeof(scalar_t)) && aligned_for_vec4(cp, 1);
    const auto kernel_fn = quantize_kernel<scalar_t>;
    Device::launch(kernel_fn, grid_for<Device>(kernel_fn, items), kThreads, 0, xp, cp, aligned, p, bad.get());
  });
  // The words of the CPU driver (kernels/cpu/quantize_cpu.cpp).
  TORCH_CHECK_VALUE(!bad.raised(),
                    "quantize: x contains NaN or Inf (or the scale does), which codes cannot "
                    "represent; fake_quantize propagates them as NaN instead");
  return codes;
}

template <class Device>
std::tuple<at::Tensor, at::Tensor> double_sample_codes(const at::Tensor& x_in, const at::Tensor& scale_in,
                                                       const std::optional<at::Tensor>& table, int64_t num_levels,
                                                       int64_t seed, int64_t offset) {
  const char* op = "double_sample";
  const typename Device::Guard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  at::Tensor index = at::empty(x.sizes(), x.options().dtype(at::kByte));
  at::Tensor up = at::empty(x.sizes(), x.options().dtype(at::kByte));
  if (x.numel() == 0) return {index, up};
  const QuantizeParams p = params_of(x, scale, table, num_levels, kernel::kStochastic, seed, offset, op);
  const int64_t items = items_of(x.numel());
  ErrorFlag bad(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zipml_double_sample_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    uint8_t* ip = index.mutable_data_ptr<uint8_t>();
    uint8_t* upp = up.mutable_data_ptr<uint8_t>();
    const bool aligned = aligned_for_vec4(xp, sizeof(scalar_t)) && aligned_for_vec4(ip, 1) && aligned_for_vec4(upp, 1);
    const auto kernel_fn = double_sample_kernel<scalar_t>;
    Device::launch(kernel_fn, grid_for<Device>(kernel_fn, items), kThreads, 0, xp, ip, upp, aligned, p, bad.get());
  });
  TORCH_CHECK_VALUE(!bad.raised(),
                    "double_sample: x contains NaN or Inf (or the scale does), which codes "
                    "cannot represent");
  return {index, up};
}

template <class Device>
at::Tensor dequantize_codes(const at::Tensor& codes_in, const std::optional<at::Tensor>& up_in, int64_t up_bit,
                            const at::Tensor& scale_in, const at::Tensor& table_in, at::ScalarType dtype) {
  const char* op = "dequantize";
  const typename Device::Guard guard(codes_in.device());
  const at::Tensor codes = codes_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  const at::Tensor table = table_in.contiguous();
  const at::Tensor up = up_in && up_in->defined() ? up_in->contiguous() : at::Tensor();
  check_device(scale, codes, op, "scale");
  check_device(table, codes, op, "levels");
  TORCH_CHECK(codes.scalar_type() == at::kByte, op, ": codes must be uint8, got ", codes.scalar_type());
  TORCH_CHECK(table.scalar_type() == at::kFloat && table.numel() >= 1 && table.numel() <= kMaxLevels, op,
              ": levels must be 1 to ", kMaxLevels, " float32 values");
  TORCH_CHECK(up_bit == 0 || up_bit == 1, op, ": up_bit must be 0 or 1, got ", up_bit);
  if (up.defined()) {
    check_device(up, codes, op, "up");
    TORCH_CHECK(up.scalar_type() == at::kByte && up.numel() == codes.numel(), op,
                ": up must be uint8 with the shape of the codes");
  }
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(dtype));
  const int64_t numel = codes.numel();
  if (numel == 0) return out;
  const ScaleGroups groups = groups_of(scale, numel, op);
  const int count = static_cast<int>(table.numel());
  ErrorFlag bad(codes);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "zipml_dequantize_cuda", [&] {
    const uint8_t* cp = codes.const_data_ptr<uint8_t>();
    const uint8_t* upp = up.defined() ? up.const_data_ptr<uint8_t>() : nullptr;
    scalar_t* outp = out.mutable_data_ptr<scalar_t>();
    const bool aligned = aligned_for_vec4(cp, 1) && (upp == nullptr || aligned_for_vec4(upp, 1)) &&
                         aligned_for_vec4(outp, sizeof(scalar_t));
    const auto kernel_fn = dequantize_kernel<scalar_t>;
    Device::launch(kernel_fn, grid_for<Device>(kernel_fn, items_of(numel)), kThreads, 0, cp, upp,
                   static_cast<int>(up_bit), table.const_data_ptr<float>(), count, groups, numel, aligned, outp,
                   bad.get());
  });
  TORCH_CHECK_VALUE(!bad.raised(), "dequantize: a code is >= the number of levels (", count, ")");
  return out;
}

// Statistics of v = clamp(x / scale, -1, 1) for the variance-optimal levels, as on the CPU: per bin
// of `bins` equal bins over [-1, 1] the count and sum (float64), and the minimum and maximum of v.
// The sums are fixed-point (exact to 2^-72 per value, then rounded once), so they are deterministic,
// and differ from the CPU's float64 running sums only by the CPU's rounding. Both outputs stay on the
// device.
template <class Device>
std::tuple<at::Tensor, at::Tensor> level_histogram(const at::Tensor& x_in, const at::Tensor& scale_in, int64_t bins) {
  const char* op = "optimal_levels";
  const typename Device::Guard guard(x_in.device());
  TORCH_CHECK(bins >= 1, op, ": the histogram needs at least 1 bin, got ", bins);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  check_device(scale, x, op, "scale");
  at::Tensor stats = at::empty({bins, 2}, x.options().dtype(at::kDouble));
  const int64_t numel = x.numel();
  if (numel == 0) {
    stats.zero_();
    at::Tensor range = at::empty({2}, x.options().dtype(at::kFloat));
    range[0].fill_(std::numeric_limits<float>::infinity());
    range[1].fill_(-std::numeric_limits<float>::infinity());
    return {stats, range};
  }
  const ScaleGroups groups = groups_of(scale, numel, op);
  const float half_bins = 0.5f * static_cast<float>(bins);  // as the CPU computes it
  at::Tensor acc = at::zeros({bins, kHistogramSlots}, x.options().dtype(at::kLong));
  const int64_t shared_bytes = kHistogramSlots * bins * static_cast<int64_t>(sizeof(int64_t));
  // The per-block limit covers the kernel's static shared memory (block_min_max's) too.
  const bool shared_bins = shared_bytes + kStaticSharedAllowance <= Device::shared_bytes_per_block_optin();
  const size_t dynamic_shared = shared_bins ? static_cast<size_t>(shared_bytes) : 0;
  ErrorFlag bad(x);
  at::Tensor block_range;  // [grid, 2]: each block's min and max of v
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zipml_level_histogram_cuda", [&] {
    const auto kernel_fn =
        shared_bins ? level_histogram_kernel<scalar_t, true> : level_histogram_kernel<scalar_t, false>;
    if (dynamic_shared > kDefaultSharedBytes) Device::opt_in_shared_bytes(kernel_fn, dynamic_shared);
    // Few blocks: each merges all its bins into the global accumulators at the end.
    const int grid = grid_for<Device>(kernel_fn, items_of(numel), dynamic_shared, kHistogramBlocksPerSM);
    block_range = at::empty({grid, 2}, x.options().dtype(at::kFloat));
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    Device::launch(kernel_fn, grid, kThreads, dynamic_shared, xp, aligned_for_vec4(xp, sizeof(scalar_t)), groups, numel,
                   bins, half_bins, acc.mutable_data_ptr<int64_t>(), block_range.mutable_data_ptr<float>(), bad.get());
  });
  Device::launch(histogram_stats_kernel, grid_for<Device>(histogram_stats_kernel, bins), kThreads, 0,
                 acc.const_data_ptr<int64_t>(), bins, stats.mutable_data_ptr<double>());
  TORCH_CHECK_VALUE(!bad.raised(), "optimal_levels: x contains NaN or Inf (or the scale does)");
  at::Tensor range = at::stack({block_range.select(1, 0).amin(), block_range.select(1, 1).amax()});
  return {stats, range};
}

// max |x| of each of `groups` runs of consecutive elements, as float32, in one read of x; NaN where a
// run holds one, with the CPU kernel's bits (NaN payload included).
template <class Device>
at::Tensor absmax(const at::Tensor& x_in, int64_t groups) {
  const typename Device::Guard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t numel = x.numel();
  TORCH_CHECK(groups >= 1 && numel % groups == 0, "_absmax: groups must be at least 1 and divide the ", numel,
              " elements of x, got ", groups);
  at::Tensor bits = at::zeros({groups}, x.options().dtype(at::kInt));
  const int64_t inner = numel / groups;
  if (inner == 0) return bits.view(at::kFloat);
  const int64_t pieces_per_run = (inner + kAbsmaxPiece - 1) / kAbsmaxPiece;
  const int64_t pieces = groups * pieces_per_run;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zipml_absmax_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    if (inner < kThreads) {  // a block per run would leave most of its threads idle
      const auto kernel_fn = absmax_short_runs_kernel<scalar_t>;
      Device::launch(kernel_fn, grid_for<Device>(kernel_fn, groups), kThreads, 0, xp, inner, groups,
                     bits.mutable_data_ptr<int>());
      return;
    }
    const auto kernel_fn = absmax_kernel<scalar_t>;
    // a block per piece, up to one resident wave (grid_for counts a thread per item)
    const int grid = grid_for<Device>(kernel_fn, pieces * kThreads);
    Device::launch(kernel_fn, grid, kThreads, 0, xp, inner, pieces_per_run, pieces, bits.mutable_data_ptr<int>());
  });
  return bits.view(at::kFloat);
}

template <class Device>
at::Tensor pack(const at::Tensor& codes_in, int64_t bits) {
  const typename Device::Guard guard(codes_in.device());
  TORCH_CHECK(bits >= 1 && bits <= 8, "pack: bits must be an integer from 1 to 8, got ", bits);
  const at::Tensor codes = codes_in.contiguous();
  const int64_t numel = codes.numel();
  const int64_t nbytes = kernel::packed_bytes(numel, static_cast<int>(bits));
  at::Tensor packed = at::empty({nbytes}, codes.options());
  if (nbytes == 0) return packed;
  ErrorFlag bad(codes);
  Device::launch(pack_kernel, grid_for<Device>(pack_kernel, nbytes), kThreads, 0, codes.const_data_ptr<uint8_t>(),
                 numel, static_cast<int>(bits), nbytes, packed.mutable_data_ptr<uint8_t>(), bad.get());
  TORCH_CHECK_VALUE(!bad.raised(), "pack: a code does not fit in bits=", bits, " (codes must be < ", 1 << bits, ")");
  return packed;
}

template <class Device>
at::Tensor unpack(const at::Tensor& packed_in, int64_t bits, int64_t numel) {
  const typename Device::Guard guard(packed_in.device());
  TORCH_CHECK(bits >= 1 && bits <= 8, "unpack: bits must be an integer from 1 to 8, got ", bits);
  TORCH_CHECK(numel >= 0 && packed_in.numel() >= kernel::packed_bytes(numel, static_cast<int>(bits)), "unpack: ", numel,
              " codes of ", bits, " bits need ", kernel::packed_bytes(numel, static_cast<int>(bits)),
              " bytes, packed has ", packed_in.numel());
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor codes = at::empty({numel}, packed.options());
  if (numel == 0) return codes;
  Device::launch(unpack_kernel, grid_for<Device>(unpack_kernel, numel), kThreads, 0, packed.const_data_ptr<uint8_t>(),
                 static_cast<int>(bits), numel, codes.mutable_data_ptr<uint8_t>());
  return codes;
}

}  // namespace
}  // namespace zipml::cuda
