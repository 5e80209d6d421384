// Data-parallel zipml_train: several processes train replicas of one model, each on its shard of every
// global batch, and average their gradients after each backward, as fp32 or as ZipML's unbiased
// stochastic codes (arXiv 1611.05402, Sections 1-2: the gradient channel, quantized). The C++ twin of
// python -m torch_zipml.train under torchrun (torch_zipml.distributed's hook), for the same settings.
//
// Launch: torchrun --nproc-per-node 2 --no-python zipml_train --comm-bits 4 ...   or, by hand, one
// process per rank with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set (LOCAL_RANK picks cuda:N).
// RANK and WORLD_SIZE both set means distributed; neither, a single process exactly as before.
//
// Transport: a c10d::TCPStore, not a process group. pip's LibTorch ships c10d's headers but not
// gloo's (torch/include/gloo is absent and ProcessGroupGloo.hpp includes <gloo/...>), so a gloo
// process group cannot be built from C++ here; the TCPStore needs only Store.hpp and its symbols are
// in libtorch_cpu.so. Under torchrun the store is torchrun's own (TORCHELASTIC_USE_AGENT_STORE, on
// MASTER_ADDR:MASTER_PORT, as torch.distributed's env:// does); launched by hand, rank 0 hosts it
// there. Keys live under "zipml_train/" and are deleted once every rank has read them.
//
// What travels, per step and rank: ONE store value, set once and fetched by each of the other ranks:
//   fp32:            4 bytes per gradient element, every parameter's gradient in model.parameters() order
//                    (1 077 736 bytes for ResNet-20 on Fashion-MNIST);
//   --comm-bits B:   ceil(N * B / 8) bytes of packed codes (zipml::pack, all parameters in one stream)
//                    + 4 bytes (a float32 max|g| scale) per parameter tensor,
// so the compression is 4N / (ceil(N B / 8) + 4P): 7.986 for ResNet-20 at 4 bits (N = 269 434,
// P = 59; 134 953 bytes), 31.78 at 1 bit. Codes are stochastic onto the uniform grid with Philox seed
// rank_seed(seed, rank) and offset step * 2^20 + the parameter's index, as torch_zipml.distributed's
// hook with granularity "tensor". Every rank decodes all W values, sums them in rank order 0..W-1 and
// divides by W: the same bits on every rank, and, with 2 processes, the same weights bit for bit as
// the Python trainer under DDP (tests/python/test_cpp_distributed.py).
//
// Cost: this is a star through the store's server (rank 0's process, or torchrun's agent), not a
// ring. Each rank uploads its value once and downloads the other W - 1, so the server's link carries
// W values in and W (W - 1) out per step, where a ring all-gather moves W - 1 values through every
// link in parallel. Fine for a few processes on one machine or a fast network; for many ranks use the
// Python trainer (gloo/NCCL rings). Every collective is a blocking round trip (no overlap with the
// backward pass, unlike DDP's buckets).
//
// --resume: every rank reads the checkpoint rank 0 wrote (one file system, or a copy on each machine),
// with the same number of processes; the run continues bit for bit (rank 1 takes rank 0's batch-norm
// running statistics, which training-mode forwards do not read).
//
// Failures: the settings (every setting flag, --comm-bits, the number of processes, the resumed
// step) are compared with rank 0's before training, and a bad or differing one stops every rank with
// the same message. A rank that fails later puts its reason where the others wait next, so they stop
// with it; a rank that dies silently leaves the others waiting --dist-timeout seconds.
#pragma once
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace zipml {
namespace train {

// An error every rank reports the same way (exit status 2): bad or differing settings.
struct DistributedUsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// This process's place in the launch and the store the ranks talk through.
class Processes {
 public:
  // Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; connects to (or, rank 0 without
  // torchrun's agent store, hosts) the store. Neither RANK nor WORLD_SIZE set: one process, no store.
  static Processes from_environment(std::chrono::seconds timeout);

  bool distributed() const { return store_.defined(); }
  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  int64_t local_rank() const { return local_rank_; }

  // How long a rank waits for the others in a collective.
  void set_timeout(std::chrono::seconds timeout) { timeout_ = timeout; }

  // Every rank's `mine`, in rank order (a collective: every rank calls the same ones in the same order).
  std::vector<std::string> all_gather(const std::string& mine);

  // fn() on every rank; if it throws on any rank, every rank throws the same DistributedUsageError
  // naming each failed rank and its message.
  template <class Fn>
  void agree(Fn&& fn) {
    std::string message;
    try {
      fn();
    } catch (const std::exception& e) {
      if (!distributed()) throw;
      message = describe(e);
    }
    if (distributed()) check_all_ok(message);
  }

  // After an error on this rank: tells the others (their waits end with an error naming this rank).
  void abort(const std::string& message);
  // The last collective: waits until every rank is done with the store, then clears our keys.
  void close();

 private:
  Processes() = default;
  static std::string describe(const std::exception& e);
  void check_all_ok(const std::string& message);
  void wait_for(const std::vector<std::string>& keys);

  c10::intrusive_ptr<c10d::Store> store_;
  int64_t rank_ = 0, world_size_ = 1, local_rank_ = 0;
  int64_t calls_ = 0;  // collectives so far: the key of the next one
  std::chrono::milliseconds timeout_{0};
};

// Every rank's (name, value) pairs against rank 0's: on any difference, every rank throws the same
// DistributedUsageError, "<context>: rank 1 has --lr 0.2 but rank 0 has --lr 0.1; ...".
void check_same_as_rank0(Processes& processes, const std::vector<std::pair<std::string, std::string>>& items,
                         const std::string& context);

// splitmix64(seed + rank * golden ratio): rank `rank`'s Philox seed (torch_zipml.distributed.rank_seed).
uint64_t rank_seed(uint64_t seed, int64_t rank);

// The gradient exchange after each backward (see the top of this file).
class GradientExchange {
 public:
  static constexpr int kStreamBits = 20;  // Philox offset = step * 2^20 + parameter index

  GradientExchange(Processes& processes, std::optional<int64_t> bits, uint64_t seed);

  // Replaces each parameter's gradient (CPU or CUDA, float32) by the mean over the ranks; `step` is
  // the 0-based training step.
  void average(const std::vector<at::Tensor>& parameters, int64_t step);

  int64_t steps() const { return steps_; }
  int64_t bytes_sent() const { return bytes_sent_; }  // this rank's store values, in all
  int64_t bytes_fp32() const { return bytes_fp32_; }  // the same gradients as float32
  double seconds() const { return seconds_; }         // spent in average(), waiting for the others included
  double compression() const { return bytes_sent_ ? static_cast<double>(bytes_fp32_) / bytes_sent_ : 0.0; }

 private:
  std::string encode(const std::vector<at::Tensor>& grads, int64_t step) const;
  at::Tensor decode(const std::string& payload, int64_t numel, const std::vector<int64_t>& sizes) const;

  Processes& processes_;
  std::optional<int64_t> bits_;
  uint64_t seed_;
  at::Tensor grid_;
  int64_t steps_ = 0, bytes_sent_ = 0, bytes_fp32_ = 0;
  double seconds_ = 0;
};

// The rows of a global batch that rank `rank` of `world` trains on: positions rank, rank + world, ...
// of the batch padded to a multiple of `world` with the first samples of the epoch (`first`: the
// epoch's batch 0), as torch_zipml.data.BatchLoader shards.
at::Tensor shard_rows(const at::Tensor& global, const at::Tensor& first, int64_t rank, int64_t world);

// FNV-1a of the parameters' bytes (float32, in order): equal on every rank iff the replicas are.
uint64_t parameter_checksum(const std::vector<at::Tensor>& parameters);

}  // namespace train
}  // namespace zipml
