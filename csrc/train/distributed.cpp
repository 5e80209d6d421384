// Data-parallel zipml_train over a c10d::TCPStore: see distributed.h.
#include "distributed.h"

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <zipml/zipml.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>

namespace zipml {
namespace train {
namespace {

const std::string kPrefix = "zipml_train/";
const std::string kAbortSeen = kPrefix + "abort_seen";  // ranks that know of a failed rank
const std::string kDone = kPrefix + "done";             // ranks past their last collective

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::optional<std::string>(v) : std::nullopt;
}

int64_t env_int(const char* name, const std::string& text) {
  size_t used = 0;
  int64_t v = -1;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || v < 0)
    throw DistributedUsageError(std::string("environment variable ") + name +
                                " must be a non-negative integer, got '" + text + "'");
  return v;
}

std::vector<uint8_t> bytes_of(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }
std::string string_of(const std::vector<uint8_t>& b) { return std::string(b.begin(), b.end()); }

std::string key_of(int64_t call, int64_t rank) {
  return kPrefix + "c" + std::to_string(call) + "/" + std::to_string(rank);
}

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

}  // namespace

uint64_t rank_seed(uint64_t seed, int64_t rank) {
  uint64_t x = seed + static_cast<uint64_t>(rank) * kGolden + kGolden;  // splitmix64(seed + rank * golden)
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// ---- Processes -----------------------------------------------------------------------------------

Processes Processes::from_environment(std::chrono::seconds timeout) {
  Processes p;
  const auto rank = env("RANK"), world = env("WORLD_SIZE");
  if (!rank && !world) return p;
  if (!rank || !world)
    throw DistributedUsageError("set both RANK and WORLD_SIZE for a data-parallel launch (torchrun does), or neither");
  p.rank_ = env_int("RANK", *rank);
  p.world_size_ = env_int("WORLD_SIZE", *world);
  p.local_rank_ = env_int("LOCAL_RANK", env("LOCAL_RANK").value_or("0"));
  if (p.world_size_ < 1 || p.rank_ >= p.world_size_)
    throw DistributedUsageError("RANK must be in [0, WORLD_SIZE), got RANK=" + *rank + " WORLD_SIZE=" + *world);
  const auto addr = env("MASTER_ADDR"), port_text = env("MASTER_PORT");
  if (!addr || !port_text)
    throw DistributedUsageError("a data-parallel launch needs MASTER_ADDR and MASTER_PORT (rank 0's store)");
  const int64_t port = env_int("MASTER_PORT", *port_text);
  if (port > 65535) throw DistributedUsageError("MASTER_PORT must be at most 65535, got " + *port_text);
  // As torch.distributed's env:// rendezvous: under torchrun, every rank is a client of the agent's
  // store; launched by hand, rank 0 hosts one.
  const bool agent_store = env("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(port);
  o.isServer = !agent_store && p.rank_ == 0;
  o.numWorkers = static_cast<size_t>(p.world_size_);
  o.waitWorkers = !agent_store;
  o.multiTenant = true;
  o.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(timeout);
  p.store_ = c10::make_intrusive<c10d::TCPStore>(*addr, o);
  p.timeout_ = o.timeout;
  return p;
}

std::string Processes::describe(const std::exception& e) {
  if (const auto* c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

void Processes::wait_for(const std::vector<std::string>& keys) {
  try {
    store_->wait(keys, timeout_);
  } catch (const c10::DistStoreError&) {
    throw std::runtime_error("rank " + std::to_string(rank_) + " waited " + std::to_string(timeout_.count() / 1000) +
                             " s for the other ranks (--dist-timeout): did one of them die?");
  }
}

// Each value is tagged: kValue + the data, or kAborted + why (see abort()).
constexpr char kValue = 'V', kAborted = 'A';

std::vector<std::string> Processes::all_gather(const std::string& mine) {
  if (!distributed()) return {mine};
  store_->set(key_of(calls_, rank_), bytes_of(kValue + mine));
  std::vector<std::string> keys;
  for (int64_t r = 0; r < world_size_; ++r) keys.push_back(key_of(calls_, r));
  wait_for(keys);
  std::vector<std::string> others;  // this rank's value is here already
  for (int64_t r = 0; r < world_size_; ++r)
    if (r != rank_) others.push_back(keys[r]);
  std::vector<std::vector<uint8_t>> fetched;
  if (!others.empty()) fetched = store_->multiGet(others);
  fetched.insert(fetched.begin() + rank_, bytes_of(kValue + mine));
  std::vector<std::string> values;
  for (const auto& v : fetched) {
    std::string value = string_of(v);
    if (value.empty() || value[0] != kValue) {
      store_->add(kAbortSeen, 1);
      throw std::runtime_error(value.empty() ? "a rank sent nothing" : value.substr(1) + " (this rank stops too)");
    }
    values.push_back(value.substr(1));
  }
  // Every rank has published this call, so every rank is done reading the previous one.
  if (calls_ > 0) store_->deleteKey(key_of(calls_ - 1, rank_));
  ++calls_;
  return values;
}

void Processes::check_all_ok(const std::string& message) {
  const auto all = all_gather(message.empty() ? "ok" : "error:" + message);
  std::string failed;
  for (int64_t r = 0; r < world_size_; ++r)
    if (all[r] != "ok")
      failed += (failed.empty() ? "" : "; ") + ("rank " + std::to_string(r) + ": " + all[r].substr(6));
  if (!failed.empty()) throw DistributedUsageError(failed);
}

void Processes::abort(const std::string& message) {
  if (!distributed()) return;
  try {
    // The others wait for this rank's value of collective calls_ (or of calls_ + 1, if they have read
    // that one already): both say why instead, so every rank stops at its next wait.
    const auto why = bytes_of(kAborted + ("rank " + std::to_string(rank_) + " failed: " + message));
    store_->set(key_of(calls_, rank_), why);
    store_->set(key_of(calls_ + 1, rank_), why);
    const int64_t seen = store_->add(kAbortSeen, 1);
    if (rank_ != 0) return;
    // Rank 0 may host the store: stay a while, until the others have read why (or have died).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    for (int64_t n = seen; n < world_size_ && std::chrono::steady_clock::now() < deadline;
         n = store_->add(kAbortSeen, 0))
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } catch (const std::exception&) {  // the store is gone: nothing left to tell
  }
}

void Processes::close() {
  if (!distributed()) return;
  store_->add(kDone, 1);
  if (rank_ != 0) return;
  // Rank 0 may host the store: it leaves last, and clears what remains (the last collective's keys).
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  while (store_->add(kDone, 0) < world_size_) {
    if (std::chrono::steady_clock::now() > deadline) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (calls_ > 0)
    for (int64_t r = 0; r < world_size_; ++r) store_->deleteKey(key_of(calls_ - 1, r));
  store_->deleteKey(kDone);
}

void check_same_as_rank0(Processes& processes, const std::vector<std::pair<std::string, std::string>>& items,
                         const std::string& context) {
  if (!processes.distributed()) return;
  std::string mine;
  for (const auto& [name, value] : items) {
    std::string v = value;
    v.erase(std::remove(v.begin(), v.end(), '\n'), v.end());  // one line per value in the message
    mine += name + '\x1f' + v + '\x1e';
  }
  const auto all = processes.all_gather(mine);
  const auto parse = [](const std::string& text) {
    std::vector<std::pair<std::string, std::string>> out;
    std::istringstream s(text);
    for (std::string item; std::getline(s, item, '\x1e');) {
      const auto sep = item.find('\x1f');
      out.emplace_back(item.substr(0, sep), sep == std::string::npos ? "" : item.substr(sep + 1));
    }
    return out;
  };
  const auto first = parse(all[0]);
  std::string problems;
  for (size_t r = 1; r < all.size(); ++r) {
    const auto theirs = parse(all[r]);
    for (size_t i = 0; i < std::max(first.size(), theirs.size()); ++i) {
      const std::string name = i < first.size() ? first[i].first : theirs[i].first;
      const std::string v0 = i < first.size() ? first[i].second : "(nothing)";
      const std::string vr = i < theirs.size() ? theirs[i].second : "(nothing)";
      if (i < theirs.size() && i < first.size() && theirs[i].first != name)
        problems += std::string(problems.empty() ? "" : "; ") + "rank " + std::to_string(r) + " has " +
                    theirs[i].first + " where rank 0 has " + name;
      else if (vr != v0)
        problems += std::string(problems.empty() ? "" : "; ") + "rank " + std::to_string(r) + " has " + name + " " +
                    vr + " but rank 0 has " + name + " " + v0;
    }
  }
  if (!problems.empty()) throw DistributedUsageError(context + ": " + problems);
}

// ---- the gradient exchange -----------------------------------------------------------------------

GradientExchange::GradientExchange(Processes& processes, std::optional<int64_t> bits, uint64_t seed)
    : processes_(processes), bits_(bits), seed_(seed) {
  TORCH_CHECK(!bits || (*bits >= 1 && *bits <= 8), "--comm-bits must be from 1 to 8, got ", *bits);
  // The uniform grid of 2^bits levels in [-1, 1], as the quantizer makes it (the same on every rank).
  if (bits) grid_ = zipml::quantize(at::zeros({1}), QuantizeOptions(*bits).seed(0)).levels;
}

std::string GradientExchange::encode(const std::vector<at::Tensor>& grads, int64_t step) const {
  std::vector<at::Tensor> parts;
  if (!bits_) {
    for (const auto& g : grads) parts.push_back(g.reshape(-1));
    const at::Tensor flat = at::cat(parts).contiguous();
    return std::string(static_cast<const char*>(flat.data_ptr()), flat.numel() * sizeof(float));
  }
  // As torch_zipml.distributed's hook with granularity "tensor": scale = max |g| per parameter; a
  // non-finite scale travels as it is (it decodes to NaN on every rank) with zeros quantized in its place.
  std::vector<at::Tensor> codes, scales;
  const uint64_t seed = rank_seed(seed_, processes_.rank());
  for (size_t i = 0; i < grads.size(); ++i) {
    at::Tensor x = grads[i].reshape({1, -1});
    const at::Tensor s = x.abs().amax({1}, /*keepdim=*/true).to(at::kFloat);
    scales.push_back(s.reshape(-1));
    at::Tensor s_q = s;
    if (!at::isfinite(s).all().item<bool>()) {
      x = at::zeros_like(x);
      s_q = at::zeros_like(s);
    }
    const auto q = zipml::quantize(x, QuantizeOptions(*bits_).scale(s_q).seed(seed).offset(
                                          (static_cast<uint64_t>(step) << kStreamBits) + i));
    codes.push_back(q.codes.reshape(-1));
  }
  const at::Tensor packed = zipml::pack(at::cat(codes), *bits_).cpu().contiguous();
  const at::Tensor scale = at::cat(scales).cpu().contiguous();
  std::string payload(static_cast<const char*>(packed.data_ptr()), packed.numel());
  payload.append(static_cast<const char*>(scale.data_ptr()), scale.numel() * sizeof(float));
  return payload;
}

at::Tensor GradientExchange::decode(const std::string& payload, int64_t numel,
                                    const std::vector<int64_t>& sizes) const {
  const auto as_tensor = [&](size_t offset, int64_t count, at::ScalarType type) {
    at::Tensor t = at::empty({count}, type);
    std::memcpy(t.data_ptr(), payload.data() + offset, t.nbytes());
    return t;
  };
  if (!bits_) {
    TORCH_CHECK(static_cast<int64_t>(payload.size()) == numel * 4, "gradient exchange: a rank sent ", payload.size(),
                " bytes, expected ", numel * sizeof(float));
    return as_tensor(0, numel, at::kFloat);
  }
  const int64_t code_bytes = (numel * *bits_ + 7) / 8;
  const int64_t count = static_cast<int64_t>(sizes.size());
  TORCH_CHECK(static_cast<int64_t>(payload.size()) == code_bytes + 4 * count, "gradient exchange: a rank sent ",
              payload.size(), " bytes, expected ", code_bytes + 4 * count);
  const at::Tensor codes = zipml::unpack(as_tensor(0, code_bytes, at::kByte), *bits_, numel);
  const at::Tensor scale = as_tensor(code_bytes, count, at::kFloat);
  at::Tensor out = at::empty({numel}, at::kFloat);
  int64_t start = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t n = sizes[i];
    out.slice(0, start, start + n).copy_(
        zipml::dequantize(codes.slice(0, start, start + n).view({1, n}), scale.slice(0, i, i + 1).view({1, 1}), grid_)
            .view(-1));
    start += n;
  }
  return out;
}

void GradientExchange::average(const std::vector<at::Tensor>& parameters, int64_t step) {
  const auto began = std::chrono::steady_clock::now();
  std::vector<at::Tensor> grads;
  std::vector<int64_t> sizes;
  int64_t numel = 0;
  for (const auto& p : parameters) {
    at::Tensor g = p.grad().defined() ? p.grad() : at::zeros_like(p);
    TORCH_CHECK(g.scalar_type() == at::kFloat, "gradient exchange: float32 gradients only, got ", g.scalar_type());
    grads.push_back(g.detach().cpu().contiguous());
    sizes.push_back(g.numel());
    numel += g.numel();
  }
  const std::string mine = encode(grads, step);
  const std::vector<std::string> all = processes_.all_gather(mine);
  at::Tensor total = decode(all[0], numel, sizes);
  for (size_t r = 1; r < all.size(); ++r) total.add_(decode(all[r], numel, sizes));  // rank order: same bits
  total.div_(static_cast<double>(all.size()));
  int64_t start = 0;
  for (size_t i = 0; i < parameters.size(); ++i) {
    const at::Tensor mean = total.slice(0, start, start + sizes[i]).view(parameters[i].sizes());
    start += sizes[i];
    at::Tensor p = parameters[i];
    if (p.grad().defined())
      p.mutable_grad().copy_(mean);
    else
      p.mutable_grad() = mean.to(p.device()).clone();
  }
  ++steps_;
  bytes_sent_ += static_cast<int64_t>(mine.size());
  bytes_fp32_ += 4 * numel;
  seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
}

// ---- data and checks -----------------------------------------------------------------------------

at::Tensor shard_rows(const at::Tensor& global, const at::Tensor& first, int64_t rank, int64_t world) {
  at::Tensor batch = global;
  const int64_t pad = (world - global.size(0) % world) % world;
  if (pad) {  // the epoch's first samples, cycled (order.repeat(...)[:pad] in Python)
    const at::Tensor index = at::arange(pad, at::kLong).remainder(first.size(0)).to(first.device());
    batch = at::cat({global, first.index_select(0, index)});
  }
  return batch.slice(0, rank, batch.size(0), world).contiguous();
}

uint64_t parameter_checksum(const std::vector<at::Tensor>& parameters) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const auto& p : parameters) {
    const at::Tensor t = p.detach().cpu().contiguous();
    const auto* b = static_cast<const unsigned char*>(t.data_ptr());
    for (size_t i = 0; i < t.nbytes(); ++i) h = (h ^ b[i]) * 0x100000001b3ULL;
  }
  return h;
}

}  // namespace train
}  // namespace zipml
