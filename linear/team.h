// Threads for the solvers: a team of workers that run the same function in lockstep, meeting at
// barriers, and a parallel for over index ranges. Work is split into fixed ranges, so every result
// is independent of the number of threads.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ZIPML_LINEAR_PAUSE() _mm_pause()
#else
#define ZIPML_LINEAR_PAUSE() ((void)0)
#endif

namespace zipml::linear {

// Hardware threads available to this process.
inline int hardware_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

// A reusable barrier: waiters spin briefly (a mini-batch step is microseconds), then yield, then
// sleep, so an oversubscribed machine does not burn a core per waiting thread.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    if (count_ == 1) return;
    const uint64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      arrived_.store(0, std::memory_order_relaxed);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        generation_.store(generation + 1, std::memory_order_release);
      }
      wake_.notify_all();
      return;
    }
    // Spin (a step on a quiet machine takes microseconds), then yield the core (on a busy one the
    // thread we wait for may need it), then sleep.
    for (int spin = 0; spin < 4000; ++spin) {
      if (generation_.load(std::memory_order_acquire) != generation) return;
      ZIPML_LINEAR_PAUSE();
    }
    for (int turn = 0; turn < 1000; ++turn) {
      if (generation_.load(std::memory_order_acquire) != generation) return;
      std::this_thread::yield();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != generation; });
  }

 private:
  const int count_;
  std::atomic<int> arrived_{0};
  std::atomic<uint64_t> generation_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
};

// Runs body(thread_index) on `threads` threads (the caller is thread 0) and rethrows the first
// exception. A body that throws must not leave others waiting at a barrier, so bodies check their
// inputs before the first barrier.
inline void run_team(int threads, const std::function<void(int)>& body) {
  if (threads <= 1) {
    body(0);
    return;
  }
  std::vector<std::thread> workers;
  std::exception_ptr error;
  std::mutex error_mutex;
  auto guarded = [&](int t) {
    try {
      body(t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  for (int t = 1; t < threads; ++t) workers.emplace_back(guarded, t);
  guarded(0);
  for (std::thread& w : workers) w.join();
  if (error) std::rethrow_exception(error);
}

// f(begin, end) over [0, n) in `threads` contiguous ranges.
inline void parallel_for(int threads, int64_t n, const std::function<void(int64_t, int64_t)>& f) {
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  run_team(threads, [&](int t) { f(n * t / threads, n * (t + 1) / threads); });
}

}  // namespace zipml::linear
