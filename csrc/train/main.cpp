// zipml_train: train a CIFAR-style ResNet with ZipML-quantized weights (arXiv 1611.05402, Section 7)
// or an XNOR-Net baseline, from C++. The twin of `python -m torch_zipml.train`: the same flags, defaults,
// recipe, data order and augmentation, metrics and outputs, and on the CPU, for the same flags and
// thread count, the same numbers bit for bit (tests/python/test_cpp_parity.py).
//
//   zipml_train --scheme zipml --weight-bits 2 --levels optimal --epochs 10
//   zipml_train --scheme bwn --dataset cifar10 --data-dir ~/data/cifar-10-batches-bin
//   zipml_train --out runs/x --resume                  # continue runs/x/checkpoint.pt
//
// Recipe: SGD with momentum and weight decay on every parameter, learning rate --lr annealed to 0 by a
// cosine over all the run's steps (updated every step), cross-entropy; the model is built under
// torch::manual_seed(--seed), ZipML layer i gets Philox seed --seed + i, the data order and
// augmentation of epoch e come from (--seed, e).
//
// Outputs in --out: metrics.csv and metrics.json (one row per epoch; the JSON also holds the settings,
// the layers' schemes, the machine and the final result) and checkpoint.pt after every epoch, all
// written atomically. The checkpoint is a pickle Python reads with
// torch.load(path, weights_only=False): its "model" is a state dict of torch_zipml.models' ResNet.
//
// Data-parallel: torchrun --nproc-per-node 2 --no-python zipml_train --comm-bits 4 ... (see distributed.h).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <sys/stat.h>
#include <torch/cuda.h>
#include <torch/optim/sgd.h>
#include <torch/serialize.h>
#include <torch/version.h>
#include <unistd.h>
#include <zipml/data.h>
#include <zipml/models.h>
#include <zipml/nn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "distributed.h"
#include "output.h"

namespace {

using c10::IValue;
using GenericDict = c10::impl::GenericDict;
using zipml::data::BatchLoader;
using zipml::models::ResNetCifar;
using zipml::train::Processes;

constexpr const char* kFormat = "zipml_train/1";
constexpr const char* kCheckpoint = "checkpoint.pt";

// A user error: printed as "error: ..." and exit status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

GenericDict new_dict() { return GenericDict(c10::StringType::get(), c10::AnyType::get()); }

// ---- command line --------------------------------------------------------------------------------

struct Args {
  // model and data
  std::string model = "resnet20", dataset = "fashion-mnist", data_dir;
  std::optional<int64_t> train_subset, test_subset;
  std::string hflip = "auto";
  // quantization
  std::string scheme = "zipml";
  int64_t weight_bits = 2;
  std::string levels = "optimal", rounding = "stochastic", granularity = "channel";
  std::optional<int64_t> grad_bits, act_bits;
  std::string eval_rounding = "sample";
  bool quantize_first_last = false;
  // optimisation
  int64_t epochs = 10;
  std::optional<int64_t> max_steps;
  int64_t batch_size = 128;
  double lr = 0.1, momentum = 0.9, weight_decay = 5e-4;
  int64_t seed = 0;
  int64_t eval_batch_size = 500;
  int64_t bn_calibration = 20;
  // the run (not settings: free to differ on --resume)
  std::string out;
  std::optional<std::string> resume;
  std::optional<int64_t> stop_after_epochs, threads;
  std::string device = "cpu", progress = "auto";
  bool quiet = false, no_plot = false;
  // data-parallel (settings of a distributed run only, recorded with it: see settings_of)
  std::optional<int64_t> comm_bits;
  int64_t dist_timeout = 1800;
};

// One flag: how to parse it, and for settings, how to read and restore it (the key of metrics.json's
// "settings" and the checkpoint's, as in Python: the flag name with underscores).
struct Flag {
  std::string name, help, default_text;
  std::vector<std::string> choices;
  bool setting = true, is_switch = false;
  std::function<void(Args&, const std::string&)> parse;
  std::function<IValue(const Args&)> get;
  std::function<void(Args&, const IValue&)> set;
  std::string key() const {
    std::string k = name;
    std::replace(k.begin(), k.end(), '-', '_');
    return k;
  }
};

// The whole of `text` as a number by `convert` (std::stoll or std::stod), or a usage error naming the flag.
template <class T>
T parse_number(const std::string& flag, const std::string& text, T (*convert)(const std::string&, size_t*),
               const char* type_name) {
  size_t used = 0;
  T v = 0;
  try {
    v = convert(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size())
    throw UsageError(cat("argument --", flag, ": invalid ", type_name, " value: '", text, "'"));
  return v;
}

int64_t parse_int(const std::string& flag, const std::string& text) {
  return parse_number<int64_t>(
      flag, text, [](const std::string& t, size_t* used) -> int64_t { return std::stoll(t, used); }, "int");
}

double parse_double(const std::string& flag, const std::string& text) {
  return parse_number<double>(
      flag, text, [](const std::string& t, size_t* used) { return std::stod(t, used); }, "float");
}

Flag string_flag(const char* name, std::string Args::*m, const char* help, std::vector<std::string> choices = {},
                 bool setting = true) {
  Flag f;
  f.name = name;
  f.help = help;
  f.choices = std::move(choices);
  f.setting = setting;
  f.default_text = Args{}.*m;
  f.parse = [m](Args& a, const std::string& v) { a.*m = v; };
  f.get = [m](const Args& a) -> IValue { return a.*m; };
  f.set = [m](Args& a, const IValue& v) { a.*m = v.isNone() ? std::string() : v.toStringRef(); };
  return f;
}

Flag int_flag(const char* name, int64_t Args::*m, const char* help) {
  Flag f;
  f.name = name;
  f.help = help;
  f.default_text = std::to_string(Args{}.*m);
  const std::string n = name;
  f.parse = [m, n](Args& a, const std::string& v) { a.*m = parse_int(n, v); };
  f.get = [m](const Args& a) -> IValue { return a.*m; };
  f.set = [m](Args& a, const IValue& v) { a.*m = v.toInt(); };
  return f;
}

Flag optional_int_flag(const char* name, std::optional<int64_t> Args::*m, const char* help, bool setting = true) {
  Flag f;
  f.name = name;
  f.help = help;
  f.setting = setting;
  f.default_text = "None";
  const std::string n = name;
  f.parse = [m, n](Args& a, const std::string& v) { a.*m = parse_int(n, v); };
  f.get = [m](const Args& a) -> IValue { return a.*m ? IValue(*(a.*m)) : IValue(); };
  f.set = [m](Args& a, const IValue& v) { a.*m = v.isNone() ? std::nullopt : std::optional<int64_t>(v.toInt()); };
  return f;
}

Flag double_flag(const char* name, double Args::*m, const char* help) {
  Flag f;
  f.name = name;
  f.help = help;
  f.default_text = zipml::train::python_repr(Args{}.*m);
  const std::string n = name;
  f.parse = [m, n](Args& a, const std::string& v) { a.*m = parse_double(n, v); };
  f.get = [m](const Args& a) -> IValue { return a.*m; };
  f.set = [m](Args& a, const IValue& v) { a.*m = v.toDouble(); };
  return f;
}

Flag switch_flag(const char* name, bool Args::*m, const char* help, bool setting = true) {
  Flag f;
  f.name = name;
  f.help = help;
  f.setting = setting;
  f.is_switch = true;
  f.default_text = "False";
  f.parse = [m](Args& a, const std::string&) { a.*m = true; };
  f.get = [m](const Args& a) -> IValue { return a.*m; };
  f.set = [m](Args& a, const IValue& v) { a.*m = v.toBool(); };
  return f;
}

const std::vector<Flag>& flags() {
  static const std::vector<Flag> all = [] {
    std::vector<Flag> f;
    // model and data
    f.push_back(string_flag("model", &Args::model, "", {"resnet20", "resnet32", "resnet56"}));
    f.push_back(string_flag("dataset", &Args::dataset, "", {"fashion-mnist", "cifar10", "cifar100"}));
    f.push_back(string_flag("data-dir", &Args::data_dir,
                            "directory with the data set's files (default for fashion-mnist: "
                            "/usr/share/datasets/fashion-mnist)"));
    f.back().default_text = "None";
    f.back().get = [](const Args& a) -> IValue { return a.data_dir.empty() ? IValue() : IValue(a.data_dir); };
    f.push_back(optional_int_flag("train-subset", &Args::train_subset, "train on this many samples (seeded draw)"));
    f.push_back(optional_int_flag("test-subset", &Args::test_subset, "evaluate on this many test samples"));
    f.push_back(string_flag("hflip", &Args::hflip, "random horizontal flips; auto: on for CIFAR, off for Fashion-MNIST",
                            {"auto", "on", "off"}));
    // quantization
    f.push_back(string_flag("scheme", &Args::scheme, "", {"fp32", "bwn", "xnor", "zipml"}));
    f.push_back(int_flag("weight-bits", &Args::weight_bits, "zipml: bits per weight (1 to 8)"));
    f.push_back(string_flag("levels", &Args::levels, "zipml: weight levels", {"uniform", "optimal"}));
    f.push_back(string_flag("rounding", &Args::rounding, "", {"stochastic", "nearest"}));
    f.push_back(string_flag("granularity", &Args::granularity,
                            "zipml: one weight scale per tensor or per output channel", {"tensor", "channel"}));
    f.push_back(optional_int_flag("grad-bits", &Args::grad_bits, "zipml: quantize weight gradients to these bits"));
    f.push_back(optional_int_flag("act-bits", &Args::act_bits, "zipml: quantize layer inputs to these bits"));
    f.push_back(string_flag("eval-rounding", &Args::eval_rounding,
                            "zipml eval mode: a fixed stochastic draw of the weights, or nearest rounding",
                            {"sample", "nearest"}));
    f.push_back(switch_flag("quantize-first-last", &Args::quantize_first_last,
                            "also quantize the first convolution and the classifier (kept FP32 by default)"));
    // optimisation
    f.push_back(int_flag("epochs", &Args::epochs, ""));
    f.push_back(optional_int_flag("max-steps", &Args::max_steps,
                                  "stop after this many steps in all (the schedule is fitted to "
                                  "min(epochs x batches, max-steps))"));
    f.push_back(int_flag("batch-size", &Args::batch_size, ""));
    f.push_back(double_flag("lr", &Args::lr, ""));
    f.push_back(double_flag("momentum", &Args::momentum, ""));
    f.push_back(double_flag("weight-decay", &Args::weight_decay, ""));
    f.push_back(int_flag("seed", &Args::seed, ""));
    // the run
    f.push_back(string_flag("out", &Args::out, "output directory (default runs/<model>-<dataset>-<scheme>-s<seed>)", {},
                            false));
    f.back().default_text = "None";
    f.push_back(optional_int_flag("stop-after-epochs", &Args::stop_after_epochs,
                                  "end this invocation after so many epochs (checkpointed; continue with --resume)",
                                  false));
    f.push_back(string_flag("device", &Args::device, "cpu, cuda, cuda:N", {}, false));
    f.push_back(optional_int_flag("threads", &Args::threads, "torch CPU threads (default: torch's choice)", false));
    f.push_back(int_flag("eval-batch-size", &Args::eval_batch_size, ""));
    f.push_back(int_flag("bn-calibration", &Args::bn_calibration,
                         "before each evaluation, re-estimate batch-norm statistics for the evaluated network on "
                         "this many training batches (unaugmented, in order); 0: use those gathered in training"));
    f.push_back(string_flag("progress", &Args::progress, "progress bar on stderr; auto: when stderr is a terminal",
                            {"auto", "on", "off"}, false));
    f.push_back(switch_flag("quiet", &Args::quiet, "no per-epoch lines on stdout", false));
    f.push_back(switch_flag("no-plot", &Args::no_plot,
                            "accepted for the Python trainer's command lines: zipml_train draws no curves.png", false));
    // data-parallel
    f.push_back(optional_int_flag("comm-bits", &Args::comm_bits,
                                  "data-parallel: exchange gradients as stochastic codes of this many bits (1 to 8) "
                                  "with one float32 scale per parameter tensor, instead of float32",
                                  false));
    f.push_back(int_flag("dist-timeout", &Args::dist_timeout,
                         "data-parallel: seconds a rank waits for the others before giving up"));
    f.back().setting = false;
    return f;
  }();
  return all;
}

void print_help() {
  std::cout << "usage: zipml_train [--flag value ...] [--resume [CHECKPOINT]]\n\n"
               "Train a CIFAR-style ResNet with ZipML-quantized weights or an XNOR-Net baseline (the C++ twin of\n"
               "python -m torch_zipml.train).\n\n";
  for (const Flag& f : flags()) {
    std::string head = "  --" + f.name;
    if (!f.is_switch) {
      if (f.choices.empty()) {
        std::string meta = f.key();
        std::transform(meta.begin(), meta.end(), meta.begin(), ::toupper);
        head += " " + meta;
      } else {
        head += " {";
        for (size_t i = 0; i < f.choices.size(); ++i) head += (i ? "," : "") + f.choices[i];
        head += "}";
      }
    }
    std::cout << head << "\n      " << (f.help.empty() ? "" : f.help + " ") << "(default: " << f.default_text << ")\n";
  }
  std::cout << "  --resume [CHECKPOINT]\n      continue from CHECKPOINT (default: <out>/checkpoint.pt)\n"
               "  --help\n\n"
               "Data-parallel training (the twin of torchrun ... -m torch_zipml.train):\n"
               "  torchrun --nproc-per-node 2 --no-python zipml_train --comm-bits 4 ...\n"
               "or one process per rank with RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set. --batch-size is the\n"
               "global batch; each rank trains on its shard (positions rank, rank + W, ...) and after each backward\n"
               "the ranks average their gradients: float32, or with --comm-bits B unbiased B-bit stochastic codes\n"
               "(per-tensor max-abs scale, Philox seed per rank and step) plus a float32 scale per parameter tensor,\n"
               "about 32/B times fewer bytes. Every rank sums the W gradients in rank order, so the replicas stay\n"
               "identical (each prints its parameter checksum on stderr at the end). Rank 0 evaluates, writes and\n"
               "prints. The exchange goes through a c10d TCPStore (torchrun's, or hosted by rank 0): pip's LibTorch\n"
               "lacks gloo's headers, so no process group can be built. It is a star through the store's server,\n"
               "not a ring: the server moves W x (W - 1) gradient payloads out per step; fine for a few processes.\n";
}

// Parses argv into `a`; returns the keys of the settings given explicitly.
std::set<std::string> parse_args(int argc, char** argv, Args& a) {
  std::set<std::string> explicit_keys;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      print_help();
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) throw UsageError(cat("unrecognized argument: ", arg));
    std::string name = arg.substr(2), value;
    bool has_value = false;
    if (const auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (name == "resume") {
      if (!has_value && i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
        value = argv[++i];
      }
      a.resume = value;
      continue;
    }
    const auto it = std::find_if(flags().begin(), flags().end(), [&](const Flag& f) { return f.name == name; });
    if (it == flags().end()) throw UsageError(cat("unrecognized argument: --", name, " (see --help)"));
    if (!it->is_switch && !has_value) {
      if (i + 1 >= argc) throw UsageError(cat("argument --", name, ": expected one argument"));
      value = argv[++i];
    }
    if (it->is_switch && has_value) throw UsageError(cat("argument --", name, ": takes no value"));
    if (!it->choices.empty() && std::find(it->choices.begin(), it->choices.end(), value) == it->choices.end()) {
      std::string accepted;
      for (size_t k = 0; k < it->choices.size(); ++k) accepted += (k ? ", " : "") + ("'" + it->choices[k] + "'");
      throw UsageError(cat("argument --", name, ": invalid choice: '", value, "' (choose from ", accepted, ")"));
    }
    it->parse(a, value);
    if (it->setting) explicit_keys.insert(it->key());
  }
  return explicit_keys;
}

void check_args(const Args& a) {
  auto positive = [](const char* name, std::optional<int64_t> v, bool allow_none) {
    if (!v && allow_none) return;
    if (!v || *v < 1)
      throw UsageError(cat("--", name, " must be a positive integer, got ", v ? std::to_string(*v) : "None"));
  };
  positive("epochs", a.epochs, false);
  positive("batch-size", a.batch_size, false);
  positive("eval-batch-size", a.eval_batch_size, false);
  positive("train-subset", a.train_subset, true);
  positive("test-subset", a.test_subset, true);
  positive("max-steps", a.max_steps, true);
  positive("stop-after-epochs", a.stop_after_epochs, true);
  positive("threads", a.threads, true);
  positive("dist-timeout", a.dist_timeout, false);
  for (auto [name, v] : {std::pair<const char*, std::optional<int64_t>>{"weight-bits", a.weight_bits},
                         {"grad-bits", a.grad_bits},
                         {"act-bits", a.act_bits},
                         {"comm-bits", a.comm_bits}})
    if (v && (*v < 1 || *v > 8)) throw UsageError(cat("--", name, " must be from 1 to 8, got ", *v));
  if (a.bn_calibration < 0) throw UsageError(cat("--bn-calibration must be >= 0, got ", a.bn_calibration));
  if (!(a.lr > 0)) throw UsageError(cat("--lr must be positive, got ", a.lr));
  if (a.seed < 0) throw UsageError(cat("--seed must be >= 0, got ", a.seed));
}

std::string default_out(const Args& a) {
  const std::string tag = a.scheme != "zipml" ? a.scheme : cat("zipml", a.weight_bits, a.levels[0]);
  return cat("runs/", a.model, "-", a.dataset, "-", tag, "-s", a.seed);
}

// The run's settings; with world_size (a distributed run), also those of the gradient exchange, with the
// names and values of the Python trainer's (comm_levels etc. are what zipml_train does, not flags).
GenericDict settings_of(const Args& a, std::optional<int64_t> world_size = std::nullopt) {
  std::vector<std::pair<std::string, IValue>> items;
  for (const Flag& f : flags())
    if (f.setting) items.emplace_back(f.key(), f.get(a));
  if (world_size) {
    items.emplace_back("world_size", *world_size);
    items.emplace_back("comm_bits", a.comm_bits ? IValue(*a.comm_bits) : IValue());
    items.emplace_back("comm_levels", std::string("uniform"));
    items.emplace_back("comm_granularity", std::string("tensor"));
    items.emplace_back("comm_error_feedback", false);
  }
  std::sort(items.begin(), items.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
  GenericDict d = new_dict();
  for (const auto& [key, value] : items) d.insert(key, value);
  return d;
}

// The data-parallel launch's own checks (local: no collective in here); a --resume takes the run's
// --comm-bits unless given (then it must be the run's).
void check_distributed(Args& a, const Processes& procs, const std::optional<GenericDict>& ckpt) {
  if (ckpt) {
    const GenericDict saved = ckpt->at("settings").toGenericDict();
    const int64_t saved_world = saved.contains("world_size") ? saved.at("world_size").toInt() : 1;
    if (saved_world != procs.world_size())
      throw UsageError(cat("--resume: the run used ", saved_world, " process(es), this launch has ", procs.world_size(),
                           "; resume it with as many"));
    std::optional<int64_t> saved_bits;
    if (saved.contains("comm_bits") && !saved.at("comm_bits").isNone()) saved_bits = saved.at("comm_bits").toInt();
    if (a.comm_bits && a.comm_bits != saved_bits)
      throw UsageError(cat("--resume continues a run with its own settings; these flags differ: --comm-bits ",
                           *a.comm_bits, " (the run used ", saved_bits ? std::to_string(*saved_bits) : "none", ")"));
    a.comm_bits = saved_bits;
  }
  if (!procs.distributed() && a.comm_bits)
    throw UsageError("--comm-bits sets how data-parallel processes exchange gradients; launch with torchrun "
                     "(torchrun --nproc-per-node 2 --no-python zipml_train ...) or set RANK and WORLD_SIZE");
  if (procs.distributed() && a.batch_size % procs.world_size())
    throw UsageError(cat("--batch-size ", a.batch_size, " (the global batch) must be a multiple of the ",
                         procs.world_size(), " processes"));
}

// This rank's shard of a global batch (see zipml::train::shard_rows).
zipml::data::Batch shard(const zipml::data::Batch& global, const BatchLoader::Epoch& epoch, const Processes& procs) {
  const bool padded = global.y.size(0) % procs.world_size() != 0;
  const zipml::data::Batch first = padded ? epoch[0] : zipml::data::Batch{};
  return {zipml::train::shard_rows(global.x, first.x, procs.rank(), procs.world_size()),
          zipml::train::shard_rows(global.y, first.y, procs.rank(), procs.world_size())};
}

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

zipml::nn::QuantConfig quant_config(const Args& a) {
  using namespace zipml;
  nn::QuantConfig c;
  c.scheme = nn::parse_scheme(a.scheme);
  c.zipml.weight_bits(a.weight_bits)
      .weight_levels(a.levels == "optimal" ? Levels::Optimal : Levels::Uniform)
      .rounding(a.rounding == "nearest" ? Rounding::Nearest : Rounding::Stochastic)
      .granularity(a.granularity == "channel" ? Granularity::Channel : Granularity::Tensor)
      .grad_bits(a.grad_bits)
      .act_bits(a.act_bits)
      .eval_rounding(a.eval_rounding == "nearest" ? nn::EvalRounding::Nearest : nn::EvalRounding::Sample)
      .seed(static_cast<uint64_t>(a.seed));
  c.skip_first_last = !a.quantize_first_last;
  return c;
}

// ---- checkpoints ---------------------------------------------------------------------------------

std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw UsageError(cat("--resume: no checkpoint at ", path));
  return std::vector<char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string dirname_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// Loads the checkpoint of a --resume and takes the run's settings from it (in place).
std::optional<GenericDict> resolve_resume(Args& a, const std::set<std::string>& explicit_keys) {
  if (!a.resume) return std::nullopt;
  std::string path = !a.resume->empty() ? *a.resume : (a.out.empty() ? default_out(a) : a.out) + "/" + kCheckpoint;
  if (is_directory(path)) path += std::string("/") + kCheckpoint;
  IValue loaded;
  try {
    loaded = torch::pickle_load(read_file(path));
  } catch (const c10::Error& e) {
    throw UsageError(cat("--resume: ", path, " is not a zipml_train checkpoint (", e.what_without_backtrace(), ")"));
  }
  if (!loaded.isGenericDict() || !loaded.toGenericDict().contains("format") ||
      loaded.toGenericDict().at("format") != IValue(std::string(kFormat)))
    throw UsageError(cat("--resume: ", path, " is not a zipml_train checkpoint"));
  GenericDict ckpt = loaded.toGenericDict();
  const GenericDict saved = ckpt.at("settings").toGenericDict();
  const GenericDict now = settings_of(a);
  std::string conflicts;
  for (const auto& key : explicit_keys) {
    if (key == "data_dir" || !saved.contains(key)) continue;
    if (now.at(key) != saved.at(key)) {
      std::string flag = key;
      std::replace(flag.begin(), flag.end(), '_', '-');
      conflicts += cat(conflicts.empty() ? "" : "; ", "--", flag, " ", zipml::train::to_json(now.at(key), 0),
                       " (the run used ", zipml::train::to_json(saved.at(key), 0), ")");
    }
  }
  conflicts.erase(std::remove(conflicts.begin(), conflicts.end(), '\n'), conflicts.end());
  if (!conflicts.empty())
    throw UsageError("--resume continues a run with its own settings; these flags differ: " + conflicts);
  for (const Flag& f : flags())
    if (f.setting && saved.contains(f.key()) && !(f.key() == "data_dir" && explicit_keys.count("data_dir")))
      f.set(a, saved.at(f.key()));
  if (a.out.empty()) a.out = dirname_of(path);
  return ckpt;
}

// ---- progress and evaluation ---------------------------------------------------------------------

class Progress {
 public:
  Progress(int64_t total, std::string desc, bool enabled)
      : total_(total), desc_(std::move(desc)), enabled_(enabled), start_(now()), last_(start_) {}

  void update(int64_t count, const std::function<std::string()>& info) {
    const double t = now();
    if (!enabled_ || (t - last_ < 0.1 && count != total_)) return;
    last_ = t;
    const int width = 24;
    const int done = static_cast<int>(width * count / std::max<int64_t>(total_, 1));
    const double rate = count / std::max(t - start_, 1e-9);
    const double eta = rate > 0 ? (total_ - count) / rate : 0.0;
    std::fprintf(stderr, "\r%s [%s%s] %lld/%lld %.2f it/s eta %.0fs %s\033[K", desc_.c_str(),
                 std::string(done, '#').c_str(), std::string(width - done, '.').c_str(), static_cast<long long>(count),
                 static_cast<long long>(total_), rate, eta, info().c_str());
    std::fflush(stderr);
  }
  void close() {
    if (enabled_) std::fprintf(stderr, "\n");
  }
  static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }

 private:
  int64_t total_;
  std::string desc_;
  bool enabled_;
  double start_, last_;
};

struct Evaluation {
  double loss = 0, acc = 0;
};

// Mean cross-entropy and accuracy (%) over the loader, in eval mode.
Evaluation evaluate(ResNetCifar& model, const BatchLoader& loader) {
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  double loss = 0, correct = 0, count = 0;
  for (const auto& batch : loader.epoch(0)) {
    const at::Tensor logits = model->forward(batch.x);
    loss += at::cross_entropy_loss(logits, batch.y, {}, at::Reduction::Sum).item<double>();
    correct += static_cast<double>((logits.argmax(1) == batch.y).sum().item<int64_t>());
    count += static_cast<double>(batch.y.size(0));
  }
  model->train(was_training);
  return {loss / count, 100.0 * correct / count};
}

// The evaluation of the network eval mode runs, with batch-norm statistics re-estimated for it on the
// first `calibration_batches` batches of `calibration` (on the model in place, put back afterwards).
Evaluation test(ResNetCifar& model, const BatchLoader& loader, const BatchLoader& calibration,
                int64_t calibration_batches) {
  if (calibration_batches == 0) return evaluate(model, loader);
  const bool was_training = model->is_training();
  std::vector<at::Tensor> inputs;
  const BatchLoader::Epoch batches = calibration.epoch(0);
  for (int64_t b = 0; b < std::min(calibration_batches, batches.size()); ++b) inputs.push_back(batches[b].x);
  zipml::nn::CalibratedBatchNorm calibrated(
      *model, [&](const at::Tensor& x) { model->forward(x); }, inputs);
  const Evaluation result = evaluate(model, loader);
  calibrated.restore();
  model->train(was_training);
  return result;
}

// For models with stochastic ZipML layers evaluated on a fixed draw: the accuracy with nearest
// rounding in eval too (what a deterministic deployment would see).
std::optional<Evaluation> nearest_eval(ResNetCifar& model, const std::function<Evaluation()>& test) {
  std::vector<zipml::nn::ZipQuantized*> layers;
  for (const auto& m : model->modules())
    if (auto* z = dynamic_cast<zipml::nn::ZipQuantized*>(m.get()))
      if (z->quant().rounding() == zipml::Rounding::Stochastic &&
          z->quant().eval_rounding() == zipml::nn::EvalRounding::Sample)
        layers.push_back(z);
  if (layers.empty()) return std::nullopt;
  for (auto* z : layers) z->set_eval_rounding(zipml::nn::EvalRounding::Nearest);
  try {
    const Evaluation r = test();
    for (auto* z : layers) z->set_eval_rounding(zipml::nn::EvalRounding::Sample);
    return r;
  } catch (...) {
    for (auto* z : layers) z->set_eval_rounding(zipml::nn::EvalRounding::Sample);
    throw;
  }
}

GenericDict environment(const torch::Device& device) {
  GenericDict env = new_dict();
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  env.insert("program", std::string("zipml_train"));
  env.insert("torch", std::string(TORCH_VERSION));
  env.insert("machine", std::string(host));
  env.insert("threads", static_cast<int64_t>(at::get_num_threads()));
  env.insert("device", device.str());
  const auto isa =
      c10::Dispatcher::singleton().findSchemaOrThrow("zipml::_cpu_isa", "").typed<std::string(c10::string_view)>();
  env.insert("cpu_isa", isa.call(""));
  return env;
}

double cosine_factor(int64_t step, int64_t total_steps) {
  return 0.5 *
         (1.0 + std::cos(M_PI * static_cast<double>(std::min(step, total_steps)) / static_cast<double>(total_steps)));
}

std::string format_fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// ---- training ------------------------------------------------------------------------------------

int run(int argc, char** argv, Processes& procs) {
  Args a;
  std::set<std::string> explicit_keys;
  std::optional<GenericDict> ckpt;
  procs.agree([&] {  // an error on any rank stops every rank with the same message
    explicit_keys = parse_args(argc, argv, a);
    ckpt = resolve_resume(a, explicit_keys);
    check_args(a);
    check_distributed(a, procs, ckpt);
  });
  const bool lead = procs.rank() == 0;  // evaluates, writes and prints
  if (procs.distributed()) {
    std::vector<std::pair<std::string, std::string>> items;
    for (const auto& item : settings_of(a, procs.world_size())) {
      std::string flag = item.key().toStringRef();
      if (flag == "data_dir") continue;  // each machine has its own copy
      std::replace(flag.begin(), flag.end(), '_', '-');
      items.emplace_back("--" + flag, zipml::train::to_json(item.value(), 0));
    }
    items.emplace_back("--resume (at step)", ckpt ? std::to_string(ckpt->at("step").toInt()) : "no");
    zipml::train::check_same_as_rank0(procs, items, "every process must be given the same flags");
    procs.set_timeout(std::chrono::seconds(a.dist_timeout));
    if (!lead) a.quiet = true, a.progress = "off";
  }
  if (a.out.empty()) a.out = default_out(a);
  if (a.threads) at::set_num_threads(static_cast<int>(*a.threads));
  torch::Device device(a.device);
  if (device.is_cuda() && !torch::cuda::is_available())
    throw UsageError("--device cuda, but torch sees no CUDA device");
  if (device.is_cuda() && !device.has_index() && procs.distributed())
    device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(procs.local_rank()));

  zipml::data::ImageDataset train_set, test_set;
  at::Tensor mean, std;
  procs.agree([&] {
    try {
      train_set = zipml::data::load_dataset(a.dataset, a.data_dir, "train");
      test_set = zipml::data::load_dataset(a.dataset, a.data_dir, "test");
    } catch (const zipml::data::DataNotFoundError& e) {
      throw UsageError(e.what());
    }
    std::tie(mean, std) = zipml::data::channel_stats(train_set.images);  // of the whole split
    train_set = train_set.subset(a.train_subset, static_cast<uint64_t>(a.seed));
    test_set = test_set.subset(a.test_subset, static_cast<uint64_t>(a.seed));
  });
  GenericDict fingerprint = new_dict();
  for (const auto* ds : {&train_set, &test_set}) {
    GenericDict f = new_dict();
    f.insert("samples", ds->size());
    f.insert("pixel_sum", ds->images.sum(at::kLong).item<int64_t>());
    f.insert("label_sum", ds->labels.sum().item<int64_t>());
    fingerprint.insert(ds == &train_set ? "train" : "test", f);
  }
  if (ckpt && ckpt->at("data") != IValue(fingerprint))
    throw UsageError(cat("--resume: the data differ from the run's (", zipml::train::to_json(ckpt->at("data"), 0),
                         " then, ", zipml::train::to_json(fingerprint, 0),
                         " now); pass --data-dir pointing at the run's data"));
  zipml::data::LoaderOptions train_options;
  train_options.train(true).seed(static_cast<uint64_t>(a.seed)).mean(mean).std(std).device(device);
  if (a.hflip != "auto") train_options.hflip(a.hflip == "on");
  const BatchLoader train_loader(train_set, a.batch_size, train_options);
  const BatchLoader test_loader(test_set, a.eval_batch_size,
                                zipml::data::LoaderOptions().train(false).mean(mean).std(std).device(device));
  const BatchLoader calibration_loader(train_set, a.batch_size,
                                       zipml::data::LoaderOptions().train(false).mean(mean).std(std).device(device));
  auto test_model = [&](ResNetCifar& m) { return test(m, test_loader, calibration_loader, a.bn_calibration); };

  torch::manual_seed(static_cast<uint64_t>(a.seed));
  ResNetCifar model = zipml::models::make_model(a.model, train_set.num_classes, train_set.channels(), quant_config(a));
  model->to(device);
  torch::optim::SGD optimizer(model->parameters(),
                              torch::optim::SGDOptions(a.lr).momentum(a.momentum).weight_decay(a.weight_decay));
  auto& sgd_options = static_cast<torch::optim::SGDOptions&>(optimizer.param_groups()[0].options());
  const int64_t steps_per_epoch = train_loader.size();
  const int64_t total_steps =
      a.max_steps ? std::min(*a.max_steps, a.epochs * steps_per_epoch) : a.epochs * steps_per_epoch;
  const int64_t epochs = (total_steps + steps_per_epoch - 1) / steps_per_epoch;
  sgd_options.lr(a.lr * cosine_factor(0, total_steps));

  std::vector<GenericDict> history;
  int64_t epoch = 0, step = 0;
  double elapsed = 0;
  if (ckpt) {
    std::vector<at::Tensor> params = model->parameters();
    torch::OrderedDict<std::string, at::Tensor> state;
    for (const auto& item : ckpt->at("model").toGenericDict())
      state.insert(item.key().toStringRef(), item.value().toTensor());
    zipml::nn::load_state_dict(*model, state);
    torch::OrderedDict<std::string, zipml::nn::LayerRng> rng;
    for (const auto& item : ckpt->at("zipml_rng").toGenericDict()) {
      const auto layer = item.value().toGenericDict();
      rng.insert(item.key().toStringRef(),
                 {static_cast<uint64_t>(layer.at("seed").toInt()), static_cast<uint64_t>(layer.at("step").toInt())});
    }
    zipml::nn::set_rng_state(*model, rng);
    const auto buffers = ckpt->at("optimizer").toGenericDict().at("momentum_buffer").toList();
    TORCH_CHECK(buffers.size() == params.size(), "--resume: the checkpoint holds ", buffers.size(),
                " momentum buffers for ", params.size(), " parameters");
    for (size_t i = 0; i < params.size(); ++i) {
      const IValue buf = buffers.get(i);
      if (buf.isNone()) continue;
      auto s = std::make_unique<torch::optim::SGDParamState>();
      s->momentum_buffer(buf.toTensor().to(device));
      optimizer.state()[params[i].unsafeGetTensorImpl()] = std::move(s);
    }
    sgd_options.lr(ckpt->at("optimizer").toGenericDict().at("lr").toDouble());
    {
      at::Generator generator = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_state(ckpt->at("torch_rng").toTensor());
    }
    epoch = ckpt->at("epoch").toInt();
    step = ckpt->at("step").toInt();
    for (const auto& row : ckpt->at("history").toList()) history.push_back(row.get().toGenericDict());
    elapsed = ckpt->at("elapsed_seconds").toDouble();
  }

  const std::vector<at::Tensor> parameters = model->parameters();
  std::optional<zipml::train::GradientExchange> exchange;
  if (procs.distributed()) {
    zipml::train::check_same_as_rank0(procs,
                                      {{"data", zipml::train::to_json(fingerprint, 0)},
                                       {"initial parameters", hex(zipml::train::parameter_checksum(parameters))}},
                                      "the replicas differ before training");
    exchange.emplace(procs, a.comm_bits, static_cast<uint64_t>(a.seed));
  }

  const GenericDict settings = procs.distributed() ? settings_of(a, procs.world_size()) : settings_of(a);
  std::string title = cat(a.model, " on ", a.dataset, ", ", a.scheme);
  if (a.scheme == "zipml") title += cat(" ", a.weight_bits, "-bit ", a.levels, " ", a.rounding);
  if (procs.distributed())
    title += cat(", ", procs.world_size(), " processes", a.comm_bits ? cat(", ", *a.comm_bits, "-bit gradients") : "");
  const bool show = a.progress == "on" || (a.progress == "auto" && ::isatty(2));
  if (!a.quiet)
    std::cout << title << ": " << train_set.size() << " training / " << test_set.size() << " test samples, " << epochs
              << " epochs of " << steps_per_epoch << " steps (" << total_steps << " in all), out=" << a.out
              << (ckpt ? cat(", resuming after epoch ", epoch) : "") << std::endl;

  GenericDict layers = new_dict();
  for (const auto& [name, scheme] : zipml::nn::layer_schemes(*model))
    layers.insert(name, std::string(zipml::nn::scheme_name(scheme)));
  GenericDict env = environment(device);
  if (procs.distributed()) env.insert("processes", procs.world_size());
  GenericDict final_result = new_dict();
  auto record = [&]() {
    GenericDict result = new_dict();
    result.insert("settings", settings);
    result.insert("layers", layers);
    result.insert("environment", env);
    c10::impl::GenericList rows(c10::AnyType::get());
    for (const auto& row : history) rows.push_back(row);
    result.insert("epochs", rows);
    if (exchange) {
      GenericDict comm = new_dict();
      comm.insert("bytes_sent_per_rank", exchange->bytes_sent());
      comm.insert("fp32_bytes_per_rank", exchange->bytes_fp32());
      comm.insert("compression", exchange->compression());
      comm.insert("steps", exchange->steps());
      comm.insert("seconds", exchange->seconds());
      comm.insert("transport", std::string("c10d TCPStore, a star through its server"));
      result.insert("communication", comm);
    }
    if (step >= total_steps && !history.empty() && !final_result.empty()) result.insert("final", final_result);
    return result;
  };

  if (lead) zipml::train::make_directories(a.out);
  int64_t run_epochs = 0;
  model->train();
  while (step < total_steps) {
    if (a.stop_after_epochs && run_epochs >= *a.stop_after_epochs) break;
    const double start = Progress::now();
    Progress bar(std::min(steps_per_epoch, total_steps - step), cat("epoch ", epoch + 1, "/", epochs), show);
    // Running sums stay on the device (no synchronisation per step); read when displayed.
    at::Tensor loss_sum = at::zeros({}, at::TensorOptions(at::kDouble).device(device));
    at::Tensor correct = at::zeros({}, at::TensorOptions(at::kLong).device(device));
    int64_t seen = 0;
    const BatchLoader::Epoch batches = train_loader.epoch(epoch);
    for (int64_t i = 0; i < batches.size() && step < total_steps; ++i) {
      const zipml::data::Batch batch = procs.distributed() ? shard(batches[i], batches, procs) : batches[i];
      const at::Tensor logits = model->forward(batch.x);
      const at::Tensor loss = at::cross_entropy_loss(logits, batch.y);
      optimizer.zero_grad(/*set_to_none=*/true);
      loss.backward();
      if (exchange) exchange->average(parameters, step);
      optimizer.step();
      ++step;
      sgd_options.lr(a.lr * cosine_factor(step, total_steps));
      const int64_t b = batch.y.size(0);
      loss_sum += loss.detach().to(at::kDouble) * b;
      correct += (logits.argmax(1) == batch.y).sum();
      seen += b;
      bar.update(i + 1, [&] {
        return cat("loss=", format_fixed(loss_sum.item<double>() / seen, 4),
                   " acc=", format_fixed(100.0 * correct.item<int64_t>() / seen, 2));
      });
    }
    bar.close();
    ++epoch;
    ++run_epochs;
    double train_loss_sum = loss_sum.item<double>(), train_correct = static_cast<double>(correct.item<int64_t>()),
           train_seen = static_cast<double>(seen);
    if (procs.distributed()) {  // sums over the ranks, in rank order
      char mine[128];
      std::snprintf(mine, sizeof mine, "%a %a %a", train_loss_sum, train_correct, train_seen);
      train_loss_sum = train_correct = train_seen = 0;
      for (const std::string& theirs : procs.all_gather(mine)) {
        double l = 0, c = 0, n = 0;
        std::sscanf(theirs.c_str(), "%la %la %la", &l, &c, &n);
        train_loss_sum += l, train_correct += c, train_seen += n;
      }
    }
    if (!lead) continue;
    const Evaluation test = test_model(model);
    const double seconds = Progress::now() - start;
    elapsed += seconds;
    GenericDict row = new_dict();
    row.insert("epoch", epoch);
    row.insert("step", step);
    row.insert("lr", sgd_options.lr());
    row.insert("train_loss", train_loss_sum / train_seen);
    row.insert("train_acc", 100.0 * train_correct / train_seen);
    row.insert("test_loss", test.loss);
    row.insert("test_acc", test.acc);
    row.insert("epoch_seconds", seconds);
    row.insert("elapsed_seconds", elapsed);
    history.push_back(row);
    if (step >= total_steps) {
      final_result.insert("test_acc", test.acc);
      final_result.insert("test_loss", test.loss);
      final_result.insert("steps", step);
      final_result.insert("epochs", epoch);
      final_result.insert("seconds", elapsed);
      if (auto nearest = nearest_eval(model, [&] { return test_model(model); })) {
        final_result.insert("test_acc_nearest_eval", nearest->acc);
        final_result.insert("test_loss_nearest_eval", nearest->loss);
      }
    }
    if (!a.quiet)
      std::cout << "epoch " << epoch << "/" << epochs << " step " << step << ": train loss "
                << format_fixed(row.at("train_loss").toDouble(), 4) << " acc "
                << format_fixed(row.at("train_acc").toDouble(), 2) << "% | test loss " << format_fixed(test.loss, 4)
                << " acc " << format_fixed(test.acc, 2) << "% | " << format_fixed(seconds, 1) << "s" << std::endl;

    // The checkpoint: a pickle of Python-readable values (CPU tensors).
    GenericDict model_state(c10::StringType::get(), c10::TensorType::get());
    for (const auto& item : zipml::nn::state_dict(*model)) model_state.insert(item.key(), item.value().cpu());
    GenericDict rng = new_dict();
    for (const auto& item : zipml::nn::rng_state(*model)) {
      GenericDict layer = new_dict();
      layer.insert("seed", static_cast<int64_t>(item.value().seed));  // the bits of a uint64
      layer.insert("step", static_cast<int64_t>(item.value().step));
      rng.insert(item.key(), layer);
    }
    c10::impl::GenericList buffers(c10::AnyType::get());
    for (const auto& p : model->parameters()) {
      const auto it = optimizer.state().find(p.unsafeGetTensorImpl());
      if (it == optimizer.state().end())
        buffers.push_back(IValue());
      else
        buffers.push_back(static_cast<torch::optim::SGDParamState&>(*it->second).momentum_buffer().cpu());
    }
    GenericDict opt = new_dict();
    opt.insert("momentum_buffer", buffers);
    opt.insert("lr", sgd_options.lr());
    c10::impl::GenericList rows(c10::AnyType::get());
    for (const auto& r : history) rows.push_back(r);
    GenericDict checkpoint = new_dict();
    checkpoint.insert("format", std::string(kFormat));
    checkpoint.insert("settings", settings);
    checkpoint.insert("data", fingerprint);
    checkpoint.insert("epoch", epoch);
    checkpoint.insert("step", step);
    checkpoint.insert("model", model_state);
    checkpoint.insert("zipml_rng", rng);
    checkpoint.insert("optimizer", opt);
    checkpoint.insert("torch_rng", at::detail::getDefaultCPUGenerator().get_state());
    checkpoint.insert("history", rows);
    checkpoint.insert("elapsed_seconds", elapsed);
    zipml::train::write_atomic(a.out + "/" + kCheckpoint, torch::pickle_save(checkpoint));
    zipml::train::write_atomic(a.out + "/metrics.csv", zipml::train::to_csv(history));
    zipml::train::write_atomic(a.out + "/metrics.json", zipml::train::to_json(record()));
  }
  if (procs.distributed()) {
    const std::string checksum = hex(zipml::train::parameter_checksum(parameters));
    std::cerr << "zipml_train: rank " << procs.rank() << "/" << procs.world_size() << ": parameters after step " << step
              << ": checksum " << checksum << std::endl;
    zipml::train::check_same_as_rank0(procs, {{"final parameters", checksum}}, "the replicas diverged");
    if (exchange && !a.quiet && exchange->steps())
      std::cout << "gradient exchange: " << exchange->bytes_sent() / exchange->steps() << " bytes per step and rank ("
                << exchange->bytes_fp32() / exchange->steps() << " as float32), compression "
                << format_fixed(exchange->compression(), 3) << "x" << std::endl;
    procs.close();
    if (!lead) return step >= total_steps || a.stop_after_epochs ? 0 : 1;
  }
  if (step >= total_steps && final_result.empty() && !history.empty()) {  // resumed a finished run
    std::cerr << "the run in " << a.out << " had already finished" << std::endl;
    return 0;
  }
  if (!final_result.empty() && !a.quiet)
    std::cout << "final test accuracy: " << format_fixed(final_result.at("test_acc").toDouble(), 2) << "% (" << a.out
              << ")" << std::endl;
  return !final_result.empty() || a.stop_after_epochs ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<Processes> procs;
  // Prints the error; under a data-parallel launch, also tells the other ranks (they stop too).
  auto fail = [&](const std::string& message, int status) {
    std::cerr << "zipml_train: error: " << message << std::endl;
    if (procs) procs->abort(message);
    return status;
  };
  try {
    procs = Processes::from_environment(std::chrono::seconds(300));
    return run(argc, argv, *procs);
  } catch (const UsageError& e) {
    return fail(e.what(), 2);
  } catch (const zipml::train::DistributedUsageError& e) {
    return fail(e.what(), 2);
  } catch (const zipml::data::DataError& e) {
    return fail(e.what(), 1);
  } catch (const c10::Error& e) {
    return fail(e.what_without_backtrace(), 1);
  } catch (const std::exception& e) {
    return fail(e.what(), 1);
  }
}
