// Normalisation, seeded augmentation and batching: the C++ twin of the batch side of
// torch_zipml/data.py (same generator, same draws in the same order, same arithmetic).
#include <ATen/CPUGeneratorImpl.h>
#include <zipml/data.h>

#include <mutex>
#include <sstream>

namespace zipml {
namespace data {

std::pair<at::Tensor, at::Tensor> channel_stats(const at::Tensor& images) {
  TORCH_CHECK_VALUE(images.scalar_type() == at::kByte && images.dim() == 4,
                    "channel_stats: images must be uint8 (N, C, H, W), got ", images.scalar_type(), images.sizes());
  const at::Tensor values = at::arange(256, at::kDouble) / 255.0;
  std::vector<at::Tensor> means, stds;
  for (int64_t c = 0; c < images.size(1); ++c) {
    const at::Tensor counts = at::bincount(images.select(1, c).reshape(-1), {}, 256).to(at::kDouble);
    const at::Tensor n = counts.sum();
    const at::Tensor mean = (counts * values).sum() / n;
    const at::Tensor var = (counts * (values - mean).pow(2)).sum() / n;
    means.push_back(mean);
    stds.push_back(var.sqrt());
  }
  return {at::stack(means).to(at::kFloat), at::stack(stds).to(at::kFloat)};
}

uint64_t epoch_seed(uint64_t seed, uint64_t epoch) {
  const unsigned __int128 s = static_cast<unsigned __int128>(seed) * 1000003u + epoch;
  return static_cast<uint64_t>(s % (static_cast<unsigned __int128>(1) << 63));
}

at::Tensor augment(const at::Tensor& images, const at::Tensor& offsets, const at::Tensor& flips, int64_t padding) {
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  const at::Tensor padded = at::constant_pad_nd(images, {padding, padding, padding, padding}, 0);
  const at::Tensor rows = offsets.slice(1, 0, 1) + at::arange(h);  // (n, h)
  at::Tensor cols = at::arange(w).expand({n, w});
  cols = at::where(flips.view({n, 1}), (w - 1) - cols, cols) + offsets.slice(1, 1, 2);  // (n, w)
  return padded.index({at::arange(n).view({n, 1, 1, 1}), at::arange(c).view({1, c, 1, 1}), rows.view({n, 1, h, 1}),
                       cols.view({n, 1, 1, w})});
}

BatchLoader::BatchLoader(ImageDataset dataset, int64_t batch_size, LoaderOptions options)
    : dataset_(std::move(dataset)), batch_size_(batch_size), options_(std::move(options)) {
  TORCH_CHECK_VALUE(batch_size >= 1, "batch_size must be at least 1, got ", batch_size);
  TORCH_CHECK_VALUE(options_.crop_padding() >= 0, "crop_padding must be >= 0, got ", options_.crop_padding());
  at::Tensor mean, std;
  if (options_.mean() && options_.std()) {
    mean = *options_.mean();
    std = *options_.std();
  } else {
    std::tie(mean, std) = channel_stats(dataset_.images);
  }
  mean_ = mean.view({1, -1, 1, 1}).to(options_.device());
  std_ = std.view({1, -1, 1, 1}).to(options_.device());
  hflip_ = options_.hflip() ? *options_.hflip() : default_hflip(dataset_.name);
}

int64_t BatchLoader::size() const {
  const int64_t n = dataset_.size();
  return options_.drop_last() ? n / batch_size_ : (n + batch_size_ - 1) / batch_size_;
}

BatchLoader::Epoch BatchLoader::epoch(int64_t epoch) const {
  Epoch e;
  e.loader_ = this;
  const int64_t n = dataset_.size();
  if (!options_.train()) {
    e.order_ = at::arange(n);
    return e;
  }
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>();
  {
    std::lock_guard<std::mutex> lock(g.mutex());
    g.set_current_seed(epoch_seed(options_.seed(), static_cast<uint64_t>(epoch)));
  }
  e.order_ = at::randperm(n, g);
  e.offsets_ = at::randint(0, 2 * options_.crop_padding() + 1, {n, 2}, g);
  e.flips_ = at::randint(0, 2, {n}, g).to(at::kBool);
  return e;
}

Batch BatchLoader::Epoch::operator[](int64_t b) const {
  const BatchLoader& l = *loader_;
  TORCH_CHECK_INDEX(b >= 0 && b < l.size(), "batch ", b, " of an epoch of ", l.size());
  const at::Tensor index = order_.slice(0, b * l.batch_size_, (b + 1) * l.batch_size_);
  at::Tensor images = l.dataset_.images.index({index});
  if (l.options_.train()) {
    const at::Tensor flips = l.hflip_ ? flips_.index({index}) : at::zeros({index.size(0)}, at::kBool);
    images = augment(images, offsets_.index({index}), flips, l.options_.crop_padding());
  }
  at::Tensor x = images.to(l.options_.device()).to(at::kFloat).div_(255.0).sub_(l.mean_).div_(l.std_);
  return {x, l.dataset_.labels.index({index}).to(l.options_.device())};
}

}  // namespace data
}  // namespace zipml
