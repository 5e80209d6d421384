// torch-zipml for LibTorch: the image data of the trainer, the C++ twin of torch_zipml/data.py (same
// formats, checks, normalisation and random augmentation, so a C++ and a Python run see the same
// batches).
//
//   #include <zipml/data.h>
//   auto train = zipml::data::load_dataset("fashion-mnist", "", "train");   // Debian's dataset-fashion-mnist
//   auto [mean, std] = zipml::data::channel_stats(train.images);
//   zipml::data::BatchLoader loader(train, 128, zipml::data::LoaderOptions().train(true).seed(0).mean(mean).std(std));
//   for (const auto& batch : loader.epoch(0)) { /* batch.x: (B, C, 32, 32) float32, batch.y: (B,) int64 */ }
//
// Formats, checked strictly (a bad file gives a DataError naming the file and the record):
// * IDX (Fashion-MNIST; gzip-compressed or raw, detected by the gzip magic number): big-endian header,
//   two zero bytes, type byte 0x08 (unsigned byte), number of dimensions, one 32-bit size per
//   dimension, then the data. Fashion-MNIST's 28x28 images are padded with 2 black pixels per side.
// * CIFAR-10 binary (data_batch_1..5.bin, test_batch.bin): records of 1 label byte + 3072 pixel bytes
//   (1024 red, 1024 green, 1024 blue). CIFAR-100 (train.bin, test.bin): 2 label bytes (coarse, fine).
//
// Randomness: epoch e of a training loader with seed s draws, from one CPU generator seeded with
// epoch_seed(s, e) = (s * 1000003 + e) mod 2^63 and in this order, the sample order (randperm(N)), the
// crop offsets (randint(0, 2 * padding + 1, (N, 2)): row, column) and the flips (randint(0, 2, (N,))).
#pragma once
#include <ATen/ATen.h>
#include <torch/arg.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace zipml {
namespace data {

// A data file that is malformed: wrong header, truncated, or holding impossible values.
class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The data set's files are not where they were looked for; the message says how to get them.
class DataNotFoundError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

extern const char* const kFashionMnistDir;  // /usr/share/datasets/fashion-mnist (Debian's package)

// An IDX file of unsigned bytes (gzip or raw) as a uint8 tensor of the shape its header gives.
at::Tensor read_idx(const std::string& path);
// A CIFAR binary file: (images uint8 (N, 3, 32, 32), labels int64 (N, label_bytes)); num_labels[k]
// bounds label byte k (CIFAR-10: {10}; CIFAR-100: {20, 100}).
std::pair<at::Tensor, at::Tensor> read_cifar(const std::string& path, int64_t label_bytes,
                                             const std::vector<int64_t>& num_labels);

// A whole split in memory: images uint8 (N, C, 32, 32), labels int64 (N,).
struct ImageDataset {
  std::string name, split;
  at::Tensor images, labels;
  int64_t num_classes = 0;
  std::vector<std::string> classes;

  int64_t size() const { return labels.size(0); }
  int64_t channels() const { return images.size(1); }
  // n samples drawn without replacement (order kept) by a generator seeded with `seed`; the whole
  // split when n is none or not smaller.
  ImageDataset subset(std::optional<int64_t> n, uint64_t seed = 0) const;
};

// Fashion-MNIST (data_dir empty: kFashionMnistDir), CIFAR-10, CIFAR-100 (label "fine" or "coarse");
// split "train" or "test".
ImageDataset load_fashion_mnist(const std::string& data_dir, const std::string& split);
ImageDataset load_cifar10(const std::string& data_dir, const std::string& split);
ImageDataset load_cifar100(const std::string& data_dir, const std::string& split, const std::string& label = "fine");
// "fashion-mnist", "cifar10" or "cifar100".
ImageDataset load_dataset(const std::string& name, const std::string& data_dir, const std::string& split);
// Whether random horizontal flips suit the data set: on for CIFAR, off for Fashion-MNIST (whose
// product photos are canonically oriented; see torch_zipml/data.py).
bool default_hflip(const std::string& name);

// Per-channel mean and standard deviation of uint8 images in [0, 1] units, exact (from each
// channel's 256-bin histogram, in float64), as float32 tensors of shape (C,).
std::pair<at::Tensor, at::Tensor> channel_stats(const at::Tensor& images);

uint64_t epoch_seed(uint64_t seed, uint64_t epoch);

// Crops of the images zero-padded by `padding`, at (row, column) offsets in [0, 2 * padding],
// mirrored left-right where `flips` (bool (N,)).
at::Tensor augment(const at::Tensor& images, const at::Tensor& offsets, const at::Tensor& flips, int64_t padding);

struct LoaderOptions {
  // Shuffle and augment (and keep the last incomplete batch unless drop_last); else walk in order.
  TORCH_ARG(bool, train) = false;
  TORCH_ARG(uint64_t, seed) = 0;
  // Per-channel normalisation in [0, 1] units (usually the training split's); none: the data's own.
  TORCH_ARG(std::optional<at::Tensor>, mean) = std::nullopt;
  TORCH_ARG(std::optional<at::Tensor>, std) = std::nullopt;
  TORCH_ARG(int64_t, crop_padding) = 4;
  TORCH_ARG(std::optional<bool>, hflip) = std::nullopt;  // none: default_hflip(name)
  TORCH_ARG(bool, drop_last) = false;
  TORCH_ARG(at::Device, device) = at::kCPU;
};

struct Batch {
  at::Tensor x;  // float32 (B, C, 32, 32), normalised
  at::Tensor y;  // int64 (B,)
};

class BatchLoader {
 public:
  BatchLoader(ImageDataset dataset, int64_t batch_size, LoaderOptions options = {});

  int64_t size() const;  // batches per epoch

  // The batches of one epoch: a pure function of (seed, epoch, batch index).
  class Epoch {
   public:
    int64_t size() const { return loader_->size(); }
    Batch operator[](int64_t b) const;

    class iterator {
     public:
      iterator(const Epoch* epoch, int64_t b) : epoch_(epoch), b_(b) {}
      Batch operator*() const { return (*epoch_)[b_]; }
      iterator& operator++() {
        ++b_;
        return *this;
      }
      bool operator!=(const iterator& other) const { return b_ != other.b_; }

     private:
      const Epoch* epoch_;
      int64_t b_;
    };
    iterator begin() const { return {this, 0}; }
    iterator end() const { return {this, size()}; }

   private:
    friend class BatchLoader;
    const BatchLoader* loader_ = nullptr;
    at::Tensor order_, offsets_, flips_;
  };
  Epoch epoch(int64_t epoch) const;

  const ImageDataset& dataset() const { return dataset_; }
  int64_t batch_size() const { return batch_size_; }
  bool hflip() const { return hflip_; }

 private:
  ImageDataset dataset_;
  int64_t batch_size_;
  LoaderOptions options_;
  at::Tensor mean_, std_;
  bool hflip_;
};

}  // namespace data
}  // namespace zipml
