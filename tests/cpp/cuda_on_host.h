// The CUDA kernels of kernels/cuda run on the CPU: a Device for the operators of
// kernels/cuda/quantize_ops.cuh (HostDevice) that executes their kernels, unchanged, on host
// threads. On a machine without a GPU it tests what the kernels compute (indexing, grid-stride
// loops, block and warp cooperation, atomics, shared memory) and the operator code around them
// (checks, grids, error flags), against the CPU operators bit for bit. It cannot test nvcc's code
// generation (ctest cuda_ptx checks its float arithmetic) or the CUDA runtime:
// tests/python/test_cuda.py does, where a GPU is present.
//
// The emulation follows the CUDA execution model closely enough for these kernels:
//   * a launch runs its blocks one at a time, last block first (a GPU promises no order), each
//     block on blockDim.x concurrent host threads (a Team, reused from block to block);
//   * __syncthreads is a barrier of the block's threads, __shfl_xor_sync an exchange through a
//     barrier of the warp's 32 threads; a thread that returns leaves both barriers, so that no
//     barrier waits for it (the kernels here never reach one after a thread of theirs returned);
//   * a static __shared__ array is a function-local static (blocks never overlap, so one copy
//     serves them all); it keeps its contents from block to block, so a kernel that reads one
//     before writing it goes unnoticed here. Dynamic shared memory is a buffer per block, filled
//     with a garbage pattern as a GPU's would hold whatever was there;
//   * atomicAdd and atomicMax are atomic read-modify-writes (std::atomic_ref).
//
// Include it after every other header but kernels/cuda/*.cuh: it defines CUDA's keywords and
// built-in variables as macros.
#pragma once
#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

namespace zipml::cuda_on_host {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

constexpr int kWarp = 32;

// What the threads of the running block share.
struct Block {
  Block(int threads, size_t shared_bytes)
      : sync(threads), lanes(static_cast<size_t>(threads)), shared(shared_bytes / sizeof(std::max_align_t) + 1) {
    for (int w = 0; w < threads / kWarp; ++w) warps.push_back(std::make_unique<std::barrier<>>(kWarp));
    std::memset(static_cast<void*>(shared.data()), 0xA5, shared.size() * sizeof(std::max_align_t));
  }

  std::barrier<> sync;                                // __syncthreads
  std::vector<std::unique_ptr<std::barrier<>>> warps;  // the shuffles of each warp
  std::vector<uint64_t> lanes;                        // each thread's value in a shuffle
  std::vector<std::max_align_t> shared;               // dynamic shared memory
};

inline thread_local Dim3 thread_index, block_index;
inline thread_local Block* current_block = nullptr;
inline Dim3 block_dim, grid_dim;  // set before a launch's threads start, read-only while they run

[[noreturn]] inline void misuse(const char* what) {
  std::fprintf(stderr, "cuda_on_host: %s\n", what);
  std::abort();
}

inline void sync_threads() { current_block->sync.arrive_and_wait(); }

// The value of the lane whose index is this lane's xor lane_mask, for a full warp.
template <class T>
T shuffle_xor(unsigned mask, T value, int lane_mask) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t));
  if (mask != 0xFFFFFFFFu || lane_mask < 0 || lane_mask >= kWarp) misuse("__shfl_xor_sync: only full warps");
  Block& block = *current_block;
  const unsigned self = thread_index.x;
  std::barrier<>& warp = *block.warps[self / kWarp];
  std::memcpy(&block.lanes[self], &value, sizeof(T));
  warp.arrive_and_wait();  // every lane has published its value
  std::memcpy(&value, &block.lanes[self ^ static_cast<unsigned>(lane_mask)], sizeof(T));
  warp.arrive_and_wait();  // every lane has read before any publishes the next value
  return value;
}

inline unsigned long long atomic_add(unsigned long long* address, unsigned long long value) {
  return std::atomic_ref<unsigned long long>(*address).fetch_add(value);
}

inline int atomic_max(int* address, int value) {
  std::atomic_ref<int> target(*address);
  int seen = target.load();
  while (seen < value && !target.compare_exchange_weak(seen, value)) {
  }
  return seen;
}

inline float int_as_float(int bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <class T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(current_block->shared.data());
}

// `threads` host threads that run one job at a time, each with its thread index: the threads of
// every block of every launch of that size (creating them per block would cost more than the work).
class Team {
 public:
  explicit Team(int threads) : start_(threads + 1), done_(threads + 1) {
    for (int t = 0; t < threads; ++t) threads_.emplace_back([this, t] { serve(t); });
  }
  ~Team() {
    quit_ = true;
    start_.arrive_and_wait();
    for (std::thread& thread : threads_) thread.join();
  }

  // Runs job(t) on every thread t and returns when all have finished.
  void run(const std::function<void(int)>& job) {
    job_ = &job;
    start_.arrive_and_wait();
    done_.arrive_and_wait();
  }

  static Team& of_size(int threads) {
    static std::map<int, std::unique_ptr<Team>> teams;  // launches come from one thread at a time
    std::unique_ptr<Team>& team = teams[threads];
    if (!team) team = std::make_unique<Team>(threads);
    return *team;
  }

 private:
  void serve(int t) {
    for (;;) {
      start_.arrive_and_wait();
      if (quit_) return;
      (*job_)(t);
      done_.arrive_and_wait();
    }
  }

  std::barrier<> start_, done_;  // the barriers order job_ and quit_ between the threads
  const std::function<void(int)>* job_ = nullptr;
  bool quit_ = false;
  std::vector<std::thread> threads_;
};

// Runs kernel<<<grid, threads, shared_bytes>>>(args...) to completion.
template <class... Params, class... Args>
void launch(void (*kernel)(Params...), int grid, int threads, size_t shared_bytes, const Args&... args) {
  if (grid < 1 || threads < kWarp || threads % kWarp != 0) misuse("launch: grid >= 1 and whole warps");
  grid_dim = Dim3{static_cast<unsigned>(grid)};
  block_dim = Dim3{static_cast<unsigned>(threads)};
  Team& team = Team::of_size(threads);
  for (int b = grid - 1; b >= 0; --b) {
    Block block(threads, shared_bytes);
    team.run([&](int t) {
      thread_index = Dim3{static_cast<unsigned>(t)};
      block_index = Dim3{static_cast<unsigned>(b)};
      current_block = &block;
      kernel(args...);
      block.warps[static_cast<size_t>(t / kWarp)]->arrive_and_drop();
      block.sync.arrive_and_drop();
    });
  }
}

// The Device of quantize_ops.cuh. The shape of the emulated GPU is set by the tests.
struct HostDevice {
  struct Guard {
    explicit Guard(c10::Device) {}
  };

  static inline int multiprocessor_count = 2;
  static inline int resident_blocks = 1;                     // per multiprocessor, for every kernel
  static inline int64_t shared_bytes_optin = 227 * 1024;     // an H100's
  struct Launch {
    int grid;
    size_t shared_bytes;
  };
  static inline std::vector<Launch> launches;  // every launch, for the tests to inspect

  static int multiprocessors() { return multiprocessor_count; }

  template <class Kernel>
  static int blocks_per_multiprocessor(Kernel, int, size_t) {
    return resident_blocks;
  }

  static int64_t shared_bytes_per_block_optin() { return shared_bytes_optin; }

  template <class Kernel>
  static void opt_in_shared_bytes(Kernel, size_t bytes) {
    TORCH_CHECK(static_cast<int64_t>(bytes) <= shared_bytes_optin, "cuda_on_host: ", bytes,
                " bytes of shared memory asked for, the device has ", shared_bytes_optin);
  }

  template <class... Params, class... Args>
  static void launch(void (*kernel)(Params...), int grid, int threads, size_t shared_bytes, const Args&... args) {
    launches.push_back({grid, shared_bytes});
    cuda_on_host::launch(kernel, grid, threads, shared_bytes, args...);
  }
};

}  // namespace zipml::cuda_on_host

// CUDA's keywords and built-ins, as the kernels use them.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define ZIPML_DYNAMIC_SHARED(T, name) T* const name = ::zipml::cuda_on_host::dynamic_shared<T>()
#define threadIdx (::zipml::cuda_on_host::thread_index)
#define blockIdx (::zipml::cuda_on_host::block_index)
#define blockDim (::zipml::cuda_on_host::block_dim)
#define gridDim (::zipml::cuda_on_host::grid_dim)
#define __syncthreads() ::zipml::cuda_on_host::sync_threads()
#define __shfl_xor_sync(mask, value, lane_mask) ::zipml::cuda_on_host::shuffle_xor(mask, value, lane_mask)
#define __int_as_float(bits) ::zipml::cuda_on_host::int_as_float(bits)
#define atomicAdd(address, value) ::zipml::cuda_on_host::atomic_add(address, value)
#define atomicMax(address, value) ::zipml::cuda_on_host::atomic_max(address, value)
