// CUDA kernels of the zipml device operators (schemas in csrc/ops/schemas.cpp), with the semantics
// of the CPU drivers in kernels/cpu/quantize_cpu.cpp and the bits of their per-element math
// (kernels/common/*.h, built with --fmad=false): CPU and CUDA agree bit for bit for a seed.
//
// Every kernel is a grid-stride loop (int64 indices, grid capped at one resident wave) over the
// items of quantize_items.cuh, launched on the current stream. Ops that must report bad input
// (quantize, double_sample on NaN/Inf or an invalid scale, dequantize on an out-of-range code, pack
// on a code that does not fit) raise a device flag and read it back after the kernel: they
// synchronise. fake_quantize never does: it propagates NaN instead.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "../common/pack.h"
#include "quantize_items.cuh"

namespace zipml::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 2;                         // items in flight per thread in the quantizers
constexpr int kMinBlocks = 5;                      // of fake_quantize per SM: <= 48 registers, no spills
constexpr int kMaxLevels = 256;                    // 2^8: codes are uint8
constexpr size_t kDefaultSharedBytes = 48 * 1024;  // dynamic shared memory a kernel gets without opting in
constexpr int kHistogramBlocksPerSM = 2;
constexpr int64_t kStaticSharedAllowance = 1024;  // >= the static shared memory of a kernel here

// ---- launch helpers ------------------------------------------------------------------------------

// Blocks for a grid-stride loop of `kernel` over `items` work items, one per thread: as many as can
// be resident on the device at once (one wave, so no multiprocessor idles at the end; at most
// max_per_sm per multiprocessor), or fewer.
template <class Kernel>
int grid_for(Kernel kernel, int64_t items, size_t shared_bytes = 0, int max_per_sm = 1 << 30) {
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, shared_bytes));
  const int64_t resident = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) *
                           std::max(1, std::min(per_sm, max_per_sm));
  const int64_t needed = (items + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min(needed, resident)));
}

__device__ __forceinline__ int64_t first_index() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

bool aligned_for_vec4(const void* p, size_t element_size) {
  return reinterpret_cast<uintptr_t>(p) % (4 * element_size) == 0;
}

// Copies a codebook of `count` levels into shared memory; nullptr (the uniform grid) stays null.
// `table` is the same for the whole block, so the barrier is reached by all threads or none.
__device__ const float* stage_table(const float* table, int count, float* shared) {
  if (table == nullptr) return nullptr;
  for (int i = threadIdx.x; i < count; i += blockDim.x) shared[i] = table[i];
  __syncthreads();
  return shared;
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

// ---- kernels -------------------------------------------------------------------------------------

// Calls body(v, item, cursor) for each item of this thread with its input v loaded as float32,
// kUnroll items at a time whose loads are all issued before any is used: more bytes in flight per
// thread, which a memory-bound kernel needs. Each of the kUnroll item sequences keeps its own cursor.
template <class T, class Body>
__device__ __forceinline__ void for_each_loaded_item(const T* x, int64_t numel, bool aligned, Body&& body) {
  ScaleCursor cursors[kUnroll];
  const int64_t items = items_of(numel), stride = grid_stride();
  for (int64_t base = first_index(); base < items; base += kUnroll * stride) {
    float v[kUnroll][4];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k)
      if (base + k * stride < items) load_item(x, base + k * stride, numel, aligned, v[k]);
#pragma unroll
    for (int k = 0; k < kUnroll; ++k)
      if (base + k * stride < items) body(v[k], base + k * stride, cursors[k]);
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    fake_quantize_kernel(const T* x, T* out, bool aligned, QuantizeParams p) {
  __shared__ float table[kMaxLevels];
  p.levels.table = stage_table(p.levels.table, p.levels.count, table);
  for_each_loaded_item(x, p.numel, aligned, [&](const float(&v)[4], int64_t item, ScaleCursor& cursor) {
    fake_quantize_item(v, out, aligned, item, p, cursor);
  });
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    quantize_kernel(const T* x, uint8_t* codes, bool aligned, QuantizeParams p, int* bad) {
  __shared__ float table[kMaxLevels];
  p.levels.table = stage_table(p.levels.table, p.levels.count, table);
  bool ok = true;
  for_each_loaded_item(x, p.numel, aligned, [&](const float(&v)[4], int64_t item, ScaleCursor& cursor) {
    ok &= quantize_item(v, codes, aligned, item, p, cursor);
  });
  if (!ok) *bad = 1;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    double_sample_kernel(const T* x, uint8_t* index, uint8_t* up, bool aligned, QuantizeParams p, int* bad) {
  __shared__ float table[kMaxLevels];
  p.levels.table = stage_table(p.levels.table, p.levels.count, table);
  bool ok = true;
  for_each_loaded_item(x, p.numel, aligned, [&](const float(&v)[4], int64_t item, ScaleCursor& cursor) {
    ok &= double_sample_item(v, index, up, aligned, item, p, cursor);
  });
  if (!ok) *bad = 1;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    dequantize_kernel(const uint8_t* codes, const uint8_t* up, int up_bit, const float* table_in, int count,
                      ScaleGroups groups, int64_t numel, bool aligned, T* out, int* bad) {
  __shared__ float table[kMaxLevels];
  stage_table(table_in, count, table);
  ScaleCursor cursor;
  bool ok = true;
  const int64_t items = items_of(numel);
  for (int64_t i = first_index(); i < items; i += grid_stride())
    ok &= dequantize_item(codes, up, up_bit, table, count, groups, numel, aligned, i, out, cursor);
  if (!ok) *bad = 1;
}

// Min and max over the block, valid in thread 0. Every thread of the block must call it.
__device__ void block_min_max(float& lo, float& hi) {
  __shared__ float warp_lo[kThreads / 32], warp_hi[kThreads / 32];
  for (int delta = 16; delta > 0; delta >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xFFFFFFFFu, lo, delta));
    hi = fmaxf(hi, __shfl_xor_sync(0xFFFFFFFFu, hi, delta));
  }
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 == 0) {
    warp_lo[warp] = lo;
    warp_hi[warp] = hi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) {
      lo = fminf(lo, warp_lo[w]);
      hi = fmaxf(hi, warp_hi[w]);
    }
  }
}

// Per bin, kHistogramSlots int64 accumulators: the count, then the fixed-point digits of the sum of
// v and of the sum of v^2 (quantize_items.cuh). Accumulated with atomics in a per-block copy in
// shared memory (kSharedBins), merged into `acc`, or directly in `acc` when the bins do not fit in
// shared memory; integer sums make the result independent of the order. Each block writes its min
// and max of v to block_range[2 * block + {0, 1}].
constexpr int kHistogramSlots = 1 + 2 * kFixedDigits;

__device__ __forceinline__ void add_to(int64_t* slot, int64_t value) {
  if (value != 0) atomicAdd(reinterpret_cast<unsigned long long*>(slot), static_cast<unsigned long long>(value));
}

template <class T, bool kSharedBins>
__global__ void __launch_bounds__(kThreads)
    level_histogram_kernel(const T* x, bool aligned, ScaleGroups groups, int64_t numel, int64_t bins, float half_bins,
                           int64_t* acc, float* block_range, int* bad) {
  extern __shared__ int64_t shared_acc[];
  int64_t* hist = kSharedBins ? shared_acc : acc;
  const int64_t slots = kHistogramSlots * bins;
  if (kSharedBins) {
    for (int64_t i = threadIdx.x; i < slots; i += blockDim.x) shared_acc[i] = 0;
    __syncthreads();
  }
  HistogramRange range{__int_as_float(0x7F800000), -__int_as_float(0x7F800000), true};  // +Inf, -Inf
  ScaleCursor cursor;
  const int64_t items = items_of(numel);
  for (int64_t i = first_index(); i < items; i += grid_stride()) {
    const HistogramItem h = histogram_item(x, aligned, i, numel, groups, bins, half_bins, cursor, range);
    for (int l = 0; l < h.count; ++l) {
      const double v = h.v[l];
      const FixedPoint sum = to_fixed(v), sum_sq = to_fixed(v * v);  // v * v is exact in float64
      int64_t* bin = hist + kHistogramSlots * h.bin[l];
      add_to(bin, 1);
      for (int d = 0; d < kFixedDigits; ++d) {
        add_to(bin + 1 + d, sum.digit[d]);
        add_to(bin + 1 + kFixedDigits + d, sum_sq.digit[d]);
      }
    }
  }
  if (!range.ok) *bad = 1;
  block_min_max(range.lo, range.hi);
  if (threadIdx.x == 0) {
    block_range[2 * blockIdx.x] = range.lo;
    block_range[2 * blockIdx.x + 1] = range.hi;
  }
  if (kSharedBins) {
    __syncthreads();
    for (int64_t i = threadIdx.x; i < slots; i += blockDim.x) add_to(acc + i, shared_acc[i]);
  }
}

// stats[b] = (count, sum of v, sum of v^2) of bin b in float64, from the accumulators.
__global__ void __launch_bounds__(kThreads) histogram_stats_kernel(const int64_t* acc, int64_t bins, double* stats) {
  for (int64_t b = first_index(); b < bins; b += grid_stride()) {
    const int64_t* bin = acc + kHistogramSlots * b;
    stats[3 * b] = static_cast<double>(bin[0]);
    stats[3 * b + 1] = fixed_to_double(bin + 1);
    stats[3 * b + 2] = fixed_to_double(bin + 1 + kFixedDigits);
  }
}

// One packed byte per thread; each thread also checks the codes that start in its bytes (every code
// starts in exactly one byte).
__global__ void __launch_bounds__(kThreads)
    pack_kernel(const uint8_t* codes, int64_t numel, int bits, int64_t nbytes, uint8_t* packed, int* bad) {
  unsigned seen = 0;
  for (int64_t b = first_index(); b < nbytes; b += grid_stride()) {
    packed[b] = kernel::pack_byte(codes, numel, bits, b);
    const int64_t from = (b * 8 + bits - 1) / bits;
    const int64_t end = (b * 8 + 8 + bits - 1) / bits;
    const int64_t to = end < numel ? end : numel;
    for (int64_t i = from; i < to; ++i) seen |= codes[i];
  }
  if (seen >> bits) *bad = 1;
}

__global__ void __launch_bounds__(kThreads)
    unpack_kernel(const uint8_t* packed, int bits, int64_t numel, uint8_t* codes) {
  for (int64_t i = first_index(); i < numel; i += grid_stride()) codes[i] = kernel::unpack_code(packed, bits, i);
}

// ---- operators -----------------------------------------------------------------------------------

void fake_quantize_into_cuda(const at::Tensor& x_in, const at::Tensor& scale_in, const std::optional<at::Tensor>& table,
                             int64_t num_levels, int64_t rounding, int64_t seed, int64_t offset, at::Tensor& out) {
  const char* op = "fake_quantize";
  const c10::cuda::CUDAGuard guard(x_in.device());
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
      kernel_fn<<<grid_for(kernel_fn, items), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(xp, outp, aligned, p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (!dst.is_same(out)) out.copy_(dst);
}

at::Tensor quantize_codes_cuda(const at::Tensor& x_in, const at::Tensor& scale_in,
                               const std::optional<at::Tensor>& table, int64_t num_levels, int64_t rounding,
                               int64_t seed, int64_t offset) {
  const char* op = "quantize";
  const c10::cuda::CUDAGuard guard(x_in.device());
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
    kernel_fn<<<grid_for(kernel_fn, items), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(xp, cp, aligned, p,
                                                                                             bad.get());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // The words of the CPU driver (kernels/cpu/quantize_cpu.cpp).
  TORCH_CHECK_VALUE(!bad.raised(),
                    "quantize: x contains NaN or Inf (or the scale does), which codes cannot "
                    "represent; fake_quantize propagates them as NaN instead");
  return codes;
}

std::tuple<at::Tensor, at::Tensor> double_sample_codes_cuda(const at::Tensor& x_in, const at::Tensor& scale_in,
                                                            const std::optional<at::Tensor>& table, int64_t num_levels,
                                                            int64_t seed, int64_t offset) {
  const char* op = "double_sample";
  const c10::cuda::CUDAGuard guard(x_in.device());
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
    kernel_fn<<<grid_for(kernel_fn, items), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(xp, ip, upp, aligned, p,
                                                                                             bad.get());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  TORCH_CHECK_VALUE(!bad.raised(),
                    "double_sample: x contains NaN or Inf (or the scale does), which codes "
                    "cannot represent");
  return {index, up};
}

at::Tensor dequantize_codes_cuda(const at::Tensor& codes_in, const std::optional<at::Tensor>& up_in, int64_t up_bit,
                                 const at::Tensor& scale_in, const at::Tensor& table_in, at::ScalarType dtype) {
  const char* op = "dequantize";
  const c10::cuda::CUDAGuard guard(codes_in.device());
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
    kernel_fn<<<grid_for(kernel_fn, items_of(numel)), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        cp, upp, static_cast<int>(up_bit), table.const_data_ptr<float>(), count, groups, numel, aligned, outp,
        bad.get());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  TORCH_CHECK_VALUE(!bad.raised(), "dequantize: a code is >= the number of levels (", count, ")");
  return out;
}

// Statistics of v = clamp(x / scale, -1, 1) for the variance-optimal levels, as on the CPU: per bin
// of `bins` equal bins over [-1, 1] the count, sum and sum of squares (float64), and the minimum and
// maximum of v. The sums are fixed-point (exact to 2^-72 per value, then rounded once), so they are
// deterministic, and differ from the CPU's float64 running sums only by the CPU's rounding. Both
// outputs stay on the device.
std::tuple<at::Tensor, at::Tensor> level_histogram_cuda(const at::Tensor& x_in, const at::Tensor& scale_in,
                                                        int64_t bins) {
  const char* op = "optimal_levels";
  const c10::cuda::CUDAGuard guard(x_in.device());
  TORCH_CHECK(bins >= 1, op, ": the histogram needs at least 1 bin, got ", bins);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.contiguous();
  check_device(scale, x, op, "scale");
  at::Tensor stats = at::empty({bins, 3}, x.options().dtype(at::kDouble));
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
  const bool shared_bins = shared_bytes + kStaticSharedAllowance <=
                           static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
  const size_t dynamic_shared = shared_bins ? static_cast<size_t>(shared_bytes) : 0;
  ErrorFlag bad(x);
  at::Tensor block_range;  // [grid, 2]: each block's min and max of v
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "zipml_level_histogram_cuda", [&] {
    const auto kernel_fn =
        shared_bins ? level_histogram_kernel<scalar_t, true> : level_histogram_kernel<scalar_t, false>;
    if (dynamic_shared > kDefaultSharedBytes)
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel_fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(dynamic_shared)));
    // Few blocks: each merges all its bins into the global accumulators at the end.
    const int grid = grid_for(kernel_fn, items_of(numel), dynamic_shared, kHistogramBlocksPerSM);
    block_range = at::empty({grid, 2}, x.options().dtype(at::kFloat));
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    kernel_fn<<<grid, kThreads, dynamic_shared, at::cuda::getCurrentCUDAStream()>>>(
        xp, aligned_for_vec4(xp, sizeof(scalar_t)), groups, numel, bins, half_bins, acc.mutable_data_ptr<int64_t>(),
        block_range.mutable_data_ptr<float>(), bad.get());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  histogram_stats_kernel<<<grid_for(histogram_stats_kernel, bins), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      acc.const_data_ptr<int64_t>(), bins, stats.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK_VALUE(!bad.raised(), "optimal_levels: x contains NaN or Inf (or the scale does)");
  at::Tensor range = at::stack({block_range.select(1, 0).amin(), block_range.select(1, 1).amax()});
  return {stats, range};
}

at::Tensor pack_cuda(const at::Tensor& codes_in, int64_t bits) {
  const c10::cuda::CUDAGuard guard(codes_in.device());
  TORCH_CHECK(bits >= 1 && bits <= 8, "pack: bits must be an integer from 1 to 8, got ", bits);
  const at::Tensor codes = codes_in.contiguous();
  const int64_t numel = codes.numel();
  const int64_t nbytes = kernel::packed_bytes(numel, static_cast<int>(bits));
  at::Tensor packed = at::empty({nbytes}, codes.options());
  if (nbytes == 0) return packed;
  ErrorFlag bad(codes);
  pack_kernel<<<grid_for(pack_kernel, nbytes), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      codes.const_data_ptr<uint8_t>(), numel, static_cast<int>(bits), nbytes, packed.mutable_data_ptr<uint8_t>(),
      bad.get());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK_VALUE(!bad.raised(), "pack: a code does not fit in bits=", bits, " (codes must be < ", 1 << bits, ")");
  return packed;
}

at::Tensor unpack_cuda(const at::Tensor& packed_in, int64_t bits, int64_t numel) {
  const c10::cuda::CUDAGuard guard(packed_in.device());
  TORCH_CHECK(bits >= 1 && bits <= 8, "unpack: bits must be an integer from 1 to 8, got ", bits);
  TORCH_CHECK(numel >= 0 && packed_in.numel() >= kernel::packed_bytes(numel, static_cast<int>(bits)), "unpack: ", numel,
              " codes of ", bits, " bits need ", kernel::packed_bytes(numel, static_cast<int>(bits)),
              " bytes, packed has ", packed_in.numel());
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor codes = at::empty({numel}, packed.options());
  if (numel == 0) return codes;
  unpack_kernel<<<grid_for(unpack_kernel, numel), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      packed.const_data_ptr<uint8_t>(), static_cast<int>(bits), numel, codes.mutable_data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return codes;
}

}  // namespace

TORCH_LIBRARY_IMPL(zipml, CUDA, m) {
  m.impl("_fake_quantize_into", &fake_quantize_into_cuda);
  m.impl("_quantize_codes", &quantize_codes_cuda);
  m.impl("_double_sample_codes", &double_sample_codes_cuda);
  m.impl("_dequantize_codes", &dequantize_codes_cuda);
  m.impl("_level_histogram", &level_histogram_cuda);
  m.impl("_pack", &pack_cuda);
  m.impl("_unpack", &unpack_cuda);
}

}  // namespace zipml::cuda
