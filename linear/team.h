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

// A reusable barrier for a team of `count` threads. Each thread announces its arrivals on a cache
// line of its own and reads the others' lines: one line transfer per thread and barrier, where a
// shared counter would bounce between the cores (measured on 2 cores: 140 against 230-280 ns per
// wait). Waiters spin briefly (a mini-batch step is microseconds), then yield, then sleep, so an
// oversubscribed machine does not burn a core per waiting thread.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count), slots_(static_cast<size_t>(count)) {}

  // Thread `tid` (0 <= tid < count) arrives and waits for the others to arrive as often.
  void wait(int tid) {
    if (count_ == 1) return;
    std::atomic<uint64_t>& mine = slots_[tid].arrivals;
    const uint64_t round = mine.load(std::memory_order_relaxed) + 1;
    // Sequentially consistent with the sleepers' count: a thread about to sleep either sees this
    // arrival or is seen, and woken.
    mine.store(round, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      wake_.notify_all();
    }
    auto all_arrived = [&] {
      for (const Slot& s : slots_)
        if (s.arrivals.load(std::memory_order_seq_cst) < round) return false;
      return true;
    };
    for (int spin = 0; spin < 4000; ++spin) {
      if (all_arrived()) return;
      ZIPML_LINEAR_PAUSE();
    }
    for (int turn = 0; turn < 1000; ++turn) {  // the thread we wait for may need this core
      if (all_arrived()) return;
      std::this_thread::yield();
    }
    std::unique_lock<std::mutex> lock(mutex_);
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    wake_.wait(lock, all_arrived);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  struct alignas(64) Slot {
    std::atomic<uint64_t> arrivals{0};  // barriers this thread has reached
  };
  const int count_;
  std::vector<Slot> slots_;
  std::atomic<int> sleepers_{0};
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
