// IDX (Fashion-MNIST) and CIFAR-10/100 binary readers: the C++ twins of the readers of
// torch_zipml/data.py, with the same checks and messages (file and record named).
#include <ATen/CPUGeneratorImpl.h>
#include <sys/stat.h>
#include <zipml/data.h>
#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>

namespace zipml {
namespace data {

const char* const kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

namespace {

constexpr int64_t kCifarPixels = 3 * 32 * 32;

const std::vector<std::string> kFashionMnistClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                       "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
const std::vector<std::string> kCifar10Classes = {"airplane", "automobile", "bird",  "cat",  "deer",
                                                  "dog",      "frog",       "horse", "ship", "truck"};

template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

// The file's bytes, decompressed if it is gzip (detected by its magic number, not its name). A
// truncated gzip stream yields what it holds, so the caller can name the incomplete record.
std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw DataNotFoundError(cat(path, ": cannot open: ", std::strerror(errno)));
  std::vector<uint8_t> raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (raw.size() < 2 || raw[0] != 0x1f || raw[1] != 0x8b) return raw;

  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) throw DataError(cat(path, ": cannot initialise zlib"));
  std::vector<uint8_t> out(raw.size() * 4 + 4096);
  z.next_in = raw.data();
  z.avail_in = static_cast<uInt>(raw.size());  // a gzip stream of 4 GiB or more is no image data set
  for (;;) {
    if (z.total_out == out.size()) out.resize(out.size() * 2);
    z.next_out = out.data() + z.total_out;
    z.avail_out = static_cast<uInt>(std::min<size_t>(out.size() - z.total_out, 1u << 30));
    const int rc = inflate(&z, Z_NO_FLUSH);
    if (rc == Z_STREAM_END) break;                    // trailing bytes after the first member: ignored
    if (rc == Z_BUF_ERROR && z.avail_in == 0) break;  // the stream was cut short: keep the prefix
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      const std::string why = z.msg ? z.msg : zError(rc);
      inflateEnd(&z);
      throw DataError(cat(path, ": corrupt gzip stream (", why, ")"));
    }
  }
  out.resize(z.total_out);
  inflateEnd(&z);
  return out;
}

at::Tensor to_tensor(const uint8_t* data, int64_t count, std::vector<int64_t> shape) {
  at::Tensor t = at::empty(shape, at::kByte);
  std::memcpy(t.data_ptr<uint8_t>(), data, static_cast<size_t>(count));
  return t;
}

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string join(const std::string& dir, const std::string& sub, const std::string& name) {
  std::string p = dir;
  for (const std::string* part : {&sub, &name}) {
    if (part->empty()) continue;
    if (!p.empty() && p.back() != '/') p += '/';
    p += *part;
  }
  return p;
}

std::string find(const std::string& dir, const std::vector<std::string>& names,
                 const std::vector<std::string>& subdirs) {
  for (const auto& sub : subdirs)
    for (const auto& name : names)
      if (is_file(join(dir, sub, name))) return join(dir, sub, name);
  return "";
}

const std::string& checked_split(const std::string& split) {
  if (split != "train" && split != "test")
    throw std::invalid_argument(cat("split must be 'train' or 'test', got '", split, "'"));
  return split;
}

}  // namespace

at::Tensor read_idx(const std::string& path) {
  const std::vector<uint8_t> data = read_bytes(path);
  if (data.size() < 4)
    throw DataError(cat(path, ": not an IDX file (only ", data.size(), " bytes, a header needs at least 4)"));
  const unsigned dtype = data[2], ndim = data[3];
  if (data[0] != 0 || data[1] != 0 || ndim == 0) {
    char magic[16];
    std::snprintf(magic, sizeof magic, "%02x%02x%02x%02x", data[0], data[1], data[2], data[3]);
    throw DataError(cat(path, ": not an IDX file (magic bytes ", magic, ", expected 0000 08 0n)"));
  }
  if (dtype != 0x08) {
    char type[8];
    std::snprintf(type, sizeof type, "0x%02x", dtype);
    throw DataError(cat(path, ": IDX type byte ", type, " is not supported (only 0x08, unsigned byte)"));
  }
  const size_t header = 4 + 4 * static_cast<size_t>(ndim);
  if (data.size() < header)
    throw DataError(cat(path, ": truncated IDX header (", data.size(), " bytes, the header needs ", header, ")"));
  std::vector<int64_t> dims(ndim);
  uint64_t record = 1;
  for (unsigned d = 0; d < ndim; ++d) {
    const uint8_t* p = data.data() + 4 + 4 * d;
    dims[d] = (int64_t{p[0]} << 24) | (int64_t{p[1]} << 16) | (int64_t{p[2]} << 8) | int64_t{p[3]};
    if (d > 0 && __builtin_mul_overflow(record, static_cast<uint64_t>(dims[d]), &record))
      throw DataError(cat(path, ": corrupt: the header declares records larger than any file"));
  }
  uint64_t need = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(dims[0]), record, &need))
    throw DataError(cat(path, ": corrupt: the header declares more data than any file holds"));
  const uint64_t have = data.size() - header;
  if (have < need) {
    const uint64_t complete = record ? have / record : 0;
    throw DataError(cat(path, ": truncated: record ", complete, " (0-based) of the ", dims[0],
                        " the header declares is incomplete (", have, " data bytes, ", need, " needed)"));
  }
  if (have > need)
    throw DataError(
        cat(path, ": corrupt: ", have - need, " bytes after the ", dims[0], " records the header declares"));
  return to_tensor(data.data() + header, static_cast<int64_t>(need), dims);
}

std::pair<at::Tensor, at::Tensor> read_cifar(const std::string& path, int64_t label_bytes,
                                             const std::vector<int64_t>& num_labels) {
  const std::vector<uint8_t> data = read_bytes(path);
  const int64_t size = label_bytes + kCifarPixels;
  const int64_t length = static_cast<int64_t>(data.size());
  if (length == 0) throw DataError(cat(path, ": empty file (records of ", size, " bytes expected)"));
  if (length % size)
    throw DataError(cat(path, ": truncated: record ", length / size, " (0-based) is incomplete, the file ends ",
                        length % size, " bytes into it (records are ", size, " bytes: ", label_bytes, " label + ",
                        kCifarPixels, " pixels)"));
  const int64_t n = length / size;
  const at::Tensor records = to_tensor(data.data(), length, {n, size});
  const at::Tensor labels = records.slice(1, 0, label_bytes).to(at::kLong);
  for (size_t k = 0; k < num_labels.size(); ++k) {
    const at::Tensor bad = (labels.select(1, static_cast<int64_t>(k)) >= num_labels[k]).nonzero();
    if (bad.size(0)) {
      const int64_t i = bad[0][0].item<int64_t>();
      throw DataError(
          cat(path, ": corrupt: record ", i, " has label byte ", k, " = ", labels[i][k].item<int64_t>(),
              ", outside 0..", num_labels[k] - 1,
              " (is this the right CIFAR variant? CIFAR-10 records have 1 label byte, CIFAR-100 records 2)"));
    }
  }
  return {records.slice(1, label_bytes).reshape({n, 3, 32, 32}).contiguous(), labels};
}

// ---- data sets -----------------------------------------------------------------------------------

ImageDataset ImageDataset::subset(std::optional<int64_t> n, uint64_t seed) const {
  if (!n || *n >= size()) return *this;
  if (*n < 1) throw std::invalid_argument(cat("subset size must be at least 1, got ", *n));
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>();
  {
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_current_seed(seed);
  }
  const at::Tensor index = std::get<0>(at::randperm(size(), g).slice(0, 0, *n).sort());
  return {name, split, images.index({index}), labels.index({index}), num_classes, classes};
}

ImageDataset load_fashion_mnist(const std::string& data_dir_, const std::string& split) {
  const std::string data_dir = data_dir_.empty() ? kFashionMnistDir : data_dir_;
  const std::string prefix = checked_split(split) == "train" ? "train" : "t10k";
  std::string paths[2];
  const char* kinds[2] = {"images-idx3", "labels-idx1"};
  for (int i = 0; i < 2; ++i) {
    const std::string base = prefix + "-" + kinds[i] + "-ubyte";
    paths[i] = find(data_dir, {base + ".gz", base}, {"", "fashion-mnist"});
    if (paths[i].empty())
      throw DataNotFoundError(
          cat("Fashion-MNIST not found: no ", base, ".gz or ", base, " in '", data_dir,
              "'. Install it with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu; the files go to ",
              kFashionMnistDir,
              "), or point --data-dir at a directory holding the four IDX files "
              "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...)."));
  }
  at::Tensor images = read_idx(paths[0]), labels = read_idx(paths[1]);
  if (images.dim() != 3 || images.size(1) != 28 || images.size(2) != 28)
    throw DataError(cat(paths[0], ": expected 28x28 images (3 dimensions), the header says ", images.sizes()));
  if (labels.dim() != 1)
    throw DataError(cat(paths[1], ": expected 1 dimension of labels, the header says ", labels.sizes()));
  if (labels.size(0) != images.size(0))
    throw DataError(
        cat(paths[1], " has ", labels.size(0), " labels but ", paths[0], " has ", images.size(0), " images"));
  const at::Tensor bad = (labels >= 10).nonzero();
  if (bad.size(0)) {
    const int64_t i = bad[0][0].item<int64_t>();
    throw DataError(
        cat(paths[1], ": corrupt: record ", i, " has label ", int64_t{labels[i].item<uint8_t>()}, ", outside 0..9"));
  }
  images = at::constant_pad_nd(images.unsqueeze(1), {2, 2, 2, 2}, 0).contiguous();
  return {"fashion-mnist", split, images, labels.to(at::kLong), 10, kFashionMnistClasses};
}

namespace {

std::vector<std::string> cifar_files(const std::string& data_dir, const std::vector<std::string>& names,
                                     const std::string& subdir, const std::string& title, const std::string& archive) {
  const std::string how = cat("Download the binary version (", archive,
                              ") from https://www.cs.toronto.edu/~kriz/cifar.html, extract it, and ");
  if (data_dir.empty())
    throw DataNotFoundError(cat(title, ": no --data-dir given. ", how, "pass --data-dir pointing at it."));
  std::vector<std::string> paths;
  for (const auto& name : names) {
    const std::string path = find(data_dir, {name}, {"", subdir});
    if (path.empty())
      throw DataNotFoundError(cat(title, ": ", name, " not found in '", data_dir, "' or '", join(data_dir, subdir, ""),
                                  "'. ", how, "point --data-dir at it."));
    paths.push_back(path);
  }
  return paths;
}

}  // namespace

ImageDataset load_cifar10(const std::string& data_dir, const std::string& split) {
  std::vector<std::string> names;
  if (checked_split(split) == "train")
    for (int i = 1; i <= 5; ++i) names.push_back("data_batch_" + std::to_string(i) + ".bin");
  else
    names.push_back("test_batch.bin");
  std::vector<at::Tensor> images, labels;
  for (const auto& path : cifar_files(data_dir, names, "cifar-10-batches-bin", "CIFAR-10", "cifar-10-binary.tar.gz")) {
    auto [x, y] = read_cifar(path, 1, {10});
    images.push_back(x);
    labels.push_back(y.select(1, 0));
  }
  return {"cifar10", split, at::cat(images), at::cat(labels), 10, kCifar10Classes};
}

ImageDataset load_cifar100(const std::string& data_dir, const std::string& split, const std::string& label) {
  if (label != "fine" && label != "coarse")
    throw std::invalid_argument(cat("label must be 'fine' or 'coarse', got '", label, "'"));
  const std::string name = checked_split(split) == "train" ? "train.bin" : "test.bin";
  const auto paths = cifar_files(data_dir, {name}, "cifar-100-binary", "CIFAR-100", "cifar-100-binary.tar.gz");
  auto [images, labels] = read_cifar(paths[0], 2, {20, 100});
  const bool fine = label == "fine";
  return {"cifar100", split, images, labels.select(1, fine ? 1 : 0).contiguous(), fine ? 100 : 20, {}};
}

ImageDataset load_dataset(const std::string& name, const std::string& data_dir, const std::string& split) {
  if (name == "fashion-mnist") return load_fashion_mnist(data_dir, split);
  if (name == "cifar10") return load_cifar10(data_dir, split);
  if (name == "cifar100") return load_cifar100(data_dir, split);
  throw std::invalid_argument(cat("dataset must be one of fashion-mnist, cifar10, cifar100, got '", name, "'"));
}

bool default_hflip(const std::string& name) { return name != "fashion-mnist"; }

}  // namespace data
}  // namespace zipml
