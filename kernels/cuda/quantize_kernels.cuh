// The CUDA kernels of the zipml device operators: grid-stride loops (int64 indices) over the items
// of quantize_items.cuh, plus the block reductions and packing. Device code only; the operators
// that validate arguments and launch these kernels are in quantize_ops.cuh.
//
// The file uses nothing of the CUDA runtime but the language itself (thread and block indices,
// __syncthreads, __shfl_xor_sync, atomicAdd on 64-bit integers, atomicMax on 32-bit ones, static and
// dynamic shared memory),
// so that tests/cpp/cuda_on_host.h can compile it for the CPU and run it on machines without a GPU.
#pragma once
#include <cstdint>

#include "../common/pack.h"
#include "quantize_items.cuh"

#if defined(__CUDACC__)
// `name`: the block's dynamic shared memory (the launch's shared_bytes) as an array of T.
#define ZIPML_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif  // otherwise defined by whoever compiles the kernels for the host

namespace zipml::cuda {
namespace {

constexpr int kThreads = 256;    // threads per block, a multiple of the 32-thread warp
constexpr int kUnroll = 2;       // items in flight per thread in the quantizers
constexpr int kMinBlocks = 5;    // of fake_quantize per SM: <= 48 registers, no spills
constexpr int kMaxLevels = 256;  // 2^8: codes are uint8

__device__ __forceinline__ int64_t first_index() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_stride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Copies a codebook of `count` levels into shared memory; nullptr (the uniform grid) stays null.
// `table` is the same for the whole block, so the barrier is reached by all threads or none.
__device__ const float* stage_table(const float* table, int count, float* shared) {
  if (table == nullptr) return nullptr;
  for (int i = threadIdx.x; i < count; i += blockDim.x) shared[i] = table[i];
  __syncthreads();
  return shared;
}

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
// v (quantize_items.cuh). Accumulated with atomics in a per-block copy in shared memory
// (kSharedBins), merged into `acc`, or directly in `acc` when the bins do not fit in shared memory;
// integer sums make the result independent of the order. Each block writes its min and max of v to
// block_range[2 * block + {0, 1}].
constexpr int kHistogramSlots = 1 + kFixedDigits;

__device__ __forceinline__ void add_to(int64_t* slot, int64_t value) {
  if (value != 0) atomicAdd(reinterpret_cast<unsigned long long*>(slot), static_cast<unsigned long long>(value));
}

template <class T, bool kSharedBins>
__global__ void __launch_bounds__(kThreads)
    level_histogram_kernel(const T* x, bool aligned, ScaleGroups groups, int64_t numel, int64_t bins, float half_bins,
                           int64_t* acc, float* block_range, int* bad) {
  ZIPML_DYNAMIC_SHARED(int64_t, shared_acc);
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
      const FixedPoint sum = to_fixed(v);
      int64_t* bin = hist + kHistogramSlots * h.bin[l];
      add_to(bin, 1);
      for (int d = 0; d < kFixedDigits; ++d) add_to(bin + 1 + d, sum.digit[d]);
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

// stats[b] = (count, sum of v) of bin b in float64, from the accumulators.
__global__ void __launch_bounds__(kThreads) histogram_stats_kernel(const int64_t* acc, int64_t bins, double* stats) {
  for (int64_t b = first_index(); b < bins; b += grid_stride()) {
    const int64_t* bin = acc + kHistogramSlots * b;
    stats[2 * b] = static_cast<double>(bin[0]);
    stats[2 * b + 1] = fixed_to_double(bin + 1);
  }
}

// ---- the max-abs scale ------------------------------------------------------------------------------

// Elements of a run that one block reduces at a time: a block takes whole pieces, each of one run.
constexpr int64_t kAbsmaxPiece = 16 * kThreads;

// Max over the block, valid in thread 0; every thread must call it, and may call it again at once.
__device__ int block_max(int m) {
  __shared__ int warp_max[kThreads / 32];
  for (int delta = 16; delta > 0; delta >>= 1) {
    const int other = __shfl_xor_sync(0xFFFFFFFFu, m, delta);
    m = other > m ? other : m;
  }
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = m;
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) m = warp_max[w] > m ? warp_max[w] : m;
  __syncthreads();  // warp_max is read before the next call writes it
  return m;
}

// out[r] = the largest kernel::magnitude_bits of run r (`inner` elements), which must start at 0: the
// maxima of its pieces meet through atomicMax, in any order. The largest pattern is the run's
// max-abs, or a NaN where it holds one: the CPU kernel's bits.
template <class T>
__global__ void __launch_bounds__(kThreads)
    absmax_kernel(const T* x, int64_t inner, int64_t pieces_per_run, int64_t pieces, int* out) {
  for (int64_t p = blockIdx.x; p < pieces; p += gridDim.x) {
    const int64_t run = p / pieces_per_run;
    const int64_t begin = run * inner + p % pieces_per_run * kAbsmaxPiece;
    const int64_t run_end = (run + 1) * inner;
    const int64_t end = begin + kAbsmaxPiece < run_end ? begin + kAbsmaxPiece : run_end;
    int m = 0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const int v = kernel::magnitude_bits(static_cast<float>(x[i]));
      m = v > m ? v : m;
    }
    m = block_max(m);
    if (threadIdx.x == 0) atomicMax(out + run, m);
  }
}

// The same for runs shorter than a block: a thread per run, which it reads whole (a warp reads the
// 32 * inner consecutive elements of its runs).
template <class T>
__global__ void __launch_bounds__(kThreads)
    absmax_short_runs_kernel(const T* x, int64_t inner, int64_t runs, int* out) {
  for (int64_t run = first_index(); run < runs; run += grid_stride()) {
    int m = 0;
    for (int64_t i = run * inner; i < (run + 1) * inner; ++i) {
      const int v = kernel::magnitude_bits(static_cast<float>(x[i]));
      m = v > m ? v : m;
    }
    out[run] = m;
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

}  // namespace
}  // namespace zipml::cuda
