// The data readers and batches of <zipml/data.h> on files written here in the real formats (IDX raw
// and gzip, CIFAR-10 and CIFAR-100 binary), good and broken: errors name the file and the record;
// augmentation against a per-sample reference; the loader's seeded plan.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <zipml/data.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <regex>
#include <string>
#include <vector>

#include "temp_dir.h"

namespace {

namespace zd = zipml::data;

class DataFiles : public ::testing::Test {
 protected:
  void SetUp() override { dir = zipml_test::make_temp_dir("zipml_data"); }
  void TearDown() override { zipml_test::remove_tree(dir); }
  std::string path(const std::string& name) const { return dir + "/" + name; }
  std::string dir;
};

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes, bool gzip = false) {
  if (gzip) {
    gzFile f = gzopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
    gzclose(f);
  } else {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// An IDX file's bytes: header (type 0x08, dims big-endian), then the tensor's bytes.
std::vector<uint8_t> idx_bytes(const at::Tensor& t, uint8_t type = 0x08) {
  std::vector<uint8_t> b = {0, 0, type, static_cast<uint8_t>(t.dim())};
  for (int64_t d : t.sizes())
    for (int shift : {24, 16, 8, 0}) b.push_back(static_cast<uint8_t>((d >> shift) & 0xff));
  const at::Tensor c = t.to(at::kByte).contiguous();
  b.insert(b.end(), c.data_ptr<uint8_t>(), c.data_ptr<uint8_t>() + c.numel());
  return b;
}

at::Tensor random_bytes(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(0, 256, shape, g, at::kByte);
}

// Writes Fashion-MNIST's split in IDX files; returns (images, labels).
std::pair<at::Tensor, at::Tensor> write_fashion(const std::string& dir, int64_t n, const std::string& split,
                                                bool gzip) {
  const std::string prefix = split == "train" ? "train" : "t10k", suffix = gzip ? ".gz" : "";
  const at::Tensor images = random_bytes({n, 28, 28}, 1), labels = at::arange(n) % 10;
  write_bytes(dir + "/" + prefix + "-images-idx3-ubyte" + suffix, idx_bytes(images), gzip);
  write_bytes(dir + "/" + prefix + "-labels-idx1-ubyte" + suffix, idx_bytes(labels), gzip);
  return {images, labels};
}

// n CIFAR records: label byte(s) then 3072 pixel bytes; returns (images, labels, bytes).
std::tuple<at::Tensor, at::Tensor, std::vector<uint8_t>> cifar_records(int64_t n, int64_t label_bytes, uint64_t seed) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor labels = label_bytes == 1 ? at::randint(0, 10, {n, 1}, g)
                                             : at::stack({at::randint(0, 20, {n}, g), at::randint(0, 100, {n}, g)}, 1);
  const at::Tensor images = at::randint(0, 256, {n, 3, 32, 32}, g, at::kByte);
  const at::Tensor records = at::cat({labels.to(at::kByte), images.reshape({n, -1})}, 1).contiguous();
  return {images, labels,
          std::vector<uint8_t>(records.data_ptr<uint8_t>(), records.data_ptr<uint8_t>() + records.numel())};
}

// Runs fn, expecting an exception of type E whose message matches the regular expression.
template <class E>
::testing::AssertionResult throws_matching(const std::function<void()>& fn, const std::string& pattern) {
  try {
    fn();
  } catch (const E& e) {
    if (std::regex_search(e.what(), std::regex(pattern))) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "message '" << e.what() << "' does not match '" << pattern << "'";
  }
  return ::testing::AssertionFailure() << "no exception (expected one matching '" << pattern << "')";
}

std::string quoted(const std::string& text) {
  return std::regex_replace(text, std::regex(R"([.^$|()\[\]{}*+?\\])"), R"(\$&)");
}

// ---- IDX / Fashion-MNIST -------------------------------------------------------------------------

TEST_F(DataFiles, FashionMnistGzipAndRawArePaddedTo32) {
  for (bool gzip : {true, false}) {
    const auto [images, labels] = write_fashion(dir, 6, "train", gzip);
    const zd::ImageDataset ds = zd::load_fashion_mnist(dir, "train");
    ASSERT_EQ(ds.images.sizes(), (std::vector<int64_t>{6, 1, 32, 32}));
    EXPECT_TRUE(at::equal(ds.images.select(1, 0).slice(1, 2, 30).slice(2, 2, 30), images));
    EXPECT_EQ(ds.images.slice(2, 0, 2).sum().item<int64_t>(), 0);  // the black 2-pixel border
    EXPECT_EQ(ds.images.slice(3, 30, 32).sum().item<int64_t>(), 0);
    EXPECT_TRUE(at::equal(ds.labels, labels));
    EXPECT_EQ(ds.labels.scalar_type(), at::kLong);
    EXPECT_EQ(ds.num_classes, 10);
    zipml_test::remove_tree(dir);
    ::mkdir(dir.c_str(), 0755);
  }
}

TEST_F(DataFiles, IdxTruncatedNamesFileAndRecord) {
  const std::string p = path("x-idx3-ubyte");
  std::vector<uint8_t> b = idx_bytes(at::zeros({5, 4, 4}, at::kByte));
  b.resize(b.size() - 20);  // record 3 loses 4 bytes, record 4 is gone
  write_bytes(p, b);
  EXPECT_TRUE(throws_matching<zd::DataError>([&] { zd::read_idx(p); },
                                             quoted(p) + ": truncated: record 3 \\(0-based\\) of the 5"));
}

TEST_F(DataFiles, IdxTruncatedGzipStreamNamesTheRecord) {
  const std::string p = path("x-idx3-ubyte.gz");
  write_bytes(p, idx_bytes(random_bytes({50, 28, 28}, 2)), /*gzip=*/true);
  std::vector<uint8_t> blob = read_bytes(p);
  blob.resize(blob.size() / 2);
  write_bytes(p, blob);
  EXPECT_TRUE(
      throws_matching<zd::DataError>([&] { zd::read_idx(p); }, "truncated: record \\d+ \\(0-based\\) of the 50"));
}

TEST_F(DataFiles, IdxCorruptGzipHeadersAndTrailingBytes) {
  const std::string p = path("bad");
  std::vector<uint8_t> blob;
  write_bytes(p, idx_bytes(random_bytes({20, 28, 28}, 3)), /*gzip=*/true);
  blob = read_bytes(p);
  for (size_t i = 20; i < 60; ++i) blob[i] ^= 0x5a;  // inside the deflate stream
  write_bytes(p, blob);
  EXPECT_TRUE(throws_matching<zd::DataError>([&] { zd::read_idx(p); }, quoted(p) + ": corrupt gzip stream"));

  write_bytes(p, {0x12, 0x34, 0x08, 0x01, 0, 0, 0, 0});
  EXPECT_TRUE(throws_matching<zd::DataError>([&] { zd::read_idx(p); }, "not an IDX file \\(magic bytes 12340801"));
  write_bytes(p, {0, 0, 0x0d, 0x01, 0, 0, 0, 1, 0, 0, 0, 0});
  EXPECT_TRUE(throws_matching<zd::DataError>([&] { zd::read_idx(p); }, "IDX type byte 0x0d is not supported"));
  write_bytes(p, {0, 0, 0x08, 0x03, 0, 0, 0, 1});
  EXPECT_TRUE(throws_matching<zd::DataError>([&] { zd::read_idx(p); },
                                             "truncated IDX header \\(8 bytes, the header needs 16\\)"));
  write_bytes(p, {0, 0});
  EXPECT_TRUE(throws_matching<zd::DataError>([&] { zd::read_idx(p); }, "only 2 bytes"));
  std::vector<uint8_t> extra = idx_bytes(at::zeros({3, 2}, at::kByte));
  extra.push_back(7);
  write_bytes(p, extra);
  EXPECT_TRUE(throws_matching<zd::DataError>([&] { zd::read_idx(p); }, "corrupt: 1 bytes after the 3 records"));
  EXPECT_TRUE(throws_matching<zd::DataNotFoundError>([&] { zd::read_idx(path("missing")); }, "missing: cannot open"));
}

TEST_F(DataFiles, FashionMnistBadLabelsAndMissingFiles) {
  write_fashion(dir, 4, "test", false);
  write_bytes(path("t10k-labels-idx1-ubyte"), idx_bytes(at::tensor({1, 2, 12, 3})));
  EXPECT_TRUE(throws_matching<zd::DataError>([&] { zd::load_fashion_mnist(dir, "test"); },
                                             "t10k-labels-idx1-ubyte: corrupt: record 2 has label 12, outside 0..9"));
  write_bytes(path("t10k-labels-idx1-ubyte"), idx_bytes(at::tensor({1, 2, 3})));
  EXPECT_TRUE(
      throws_matching<zd::DataError>([&] { zd::load_fashion_mnist(dir, "test"); }, "has 3 labels but .* has 4 images"));
  EXPECT_TRUE(
      throws_matching<zd::DataNotFoundError>([&] { zd::load_fashion_mnist(dir, "train"); },
                                             "Fashion-MNIST not found: no train-images-idx3-ubyte.gz or "
                                             "train-images-idx3-ubyte in .*apt-get install dataset-fashion-mnist"));
  EXPECT_THROW(zd::load_fashion_mnist(dir, "validation"), std::invalid_argument);
}

// ---- CIFAR ---------------------------------------------------------------------------------------

TEST_F(DataFiles, Cifar10AndCifar100RecordsRoundTrip) {
  ::mkdir(path("cifar-10-batches-bin").c_str(), 0755);
  std::vector<at::Tensor> images, labels;
  for (int i = 1; i <= 6; ++i) {
    auto [x, y, raw] = cifar_records(3, 1, static_cast<uint64_t>(i));
    write_bytes(path("cifar-10-batches-bin/" +
                     (i <= 5 ? "data_batch_" + std::to_string(i) : std::string("test_batch")) + ".bin"),
                raw);
    if (i <= 5) {
      images.push_back(x);
      labels.push_back(y.select(1, 0));
    }
  }
  const zd::ImageDataset train = zd::load_cifar10(dir, "train");  // found in the archive's subdirectory
  EXPECT_TRUE(at::equal(train.images, at::cat(images)));
  EXPECT_TRUE(at::equal(train.labels, at::cat(labels)));
  EXPECT_EQ(zd::load_cifar10(dir, "test").size(), 3);
  EXPECT_TRUE(zd::default_hflip(train.name));

  auto [x, y, raw] = cifar_records(4, 2, 9);
  write_bytes(path("train.bin"), raw);
  const zd::ImageDataset fine = zd::load_cifar100(dir, "train");
  EXPECT_TRUE(at::equal(fine.images, x));
  EXPECT_TRUE(at::equal(fine.labels, y.select(1, 1)));
  EXPECT_EQ(fine.num_classes, 100);
  const zd::ImageDataset coarse = zd::load_cifar100(dir, "train", "coarse");
  EXPECT_TRUE(at::equal(coarse.labels, y.select(1, 0)));
  EXPECT_EQ(coarse.num_classes, 20);
}

TEST_F(DataFiles, CifarTruncatedCorruptAndMissing) {
  const std::string p = path("data.bin");
  auto [x, y, raw] = cifar_records(3, 1, 4);
  raw.resize(raw.size() - 100);
  write_bytes(p, raw);
  EXPECT_TRUE(throws_matching<zd::DataError>([&] { zd::read_cifar(p, 1, {10}); },
                                             quoted(p) +
                                                 ": truncated: record 2 \\(0-based\\) is incomplete, the file ends "
                                                 "2973 bytes into it \\(records are 3073 bytes"));
  auto [x2, y2, raw2] = cifar_records(3, 1, 5);
  raw2[2 * 3073] = 10;  // record 2's label
  write_bytes(p, raw2);
  EXPECT_TRUE(throws_matching<zd::DataError>(
      [&] { zd::read_cifar(p, 1, {10}); },
      "record 2 has label byte 0 = 10, outside 0..9 \\(is this the right CIFAR variant"));
  write_bytes(p, {});
  EXPECT_TRUE(throws_matching<zd::DataError>(
      [&] {
        zd::read_cifar(p, 2, {20, 100});
      },
      "empty file \\(records of 3074 bytes"));
  EXPECT_TRUE(throws_matching<zd::DataNotFoundError>(
      [&] { zd::load_cifar10(dir, "train"); }, "CIFAR-10: data_batch_1.bin not found in .*cifar-10-binary.tar.gz"));
  EXPECT_TRUE(
      throws_matching<zd::DataNotFoundError>([&] { zd::load_cifar100("", "test"); }, "CIFAR-100: no --data-dir given"));
  EXPECT_THROW(zd::load_dataset("mnist", dir, "train"), std::invalid_argument);
}

// ---- statistics, augmentation, batches -----------------------------------------------------------

TEST(Data, ChannelStatsAreExact) {
  const at::Tensor images = random_bytes({7, 3, 5, 4}, 11);
  const auto [mean, std] = zd::channel_stats(images);
  const at::Tensor v = images.to(at::kDouble).div(255.0).transpose(0, 1).reshape({3, -1});
  EXPECT_TRUE(at::allclose(mean.to(at::kDouble), v.mean(1), 0, 1e-7));
  EXPECT_TRUE(at::allclose(std.to(at::kDouble), v.std(1, /*unbiased=*/false), 0, 1e-7));
  EXPECT_EQ(mean.scalar_type(), at::kFloat);
}

TEST(Data, EpochSeedWrapsLikePythonIntegers) {
  EXPECT_EQ(zd::epoch_seed(0, 3), 3u);
  EXPECT_EQ(zd::epoch_seed(5, 2), 5u * 1000003u + 2u);
  // (2^62 * 1000003 + 1) mod 2^63 = 2^62 + 1 (1000003 is odd)
  EXPECT_EQ(zd::epoch_seed(uint64_t{1} << 62, 1), (uint64_t{1} << 62) + 1);
}

TEST(Data, AugmentIsCropOfThePaddedImageAndFlip) {
  const at::Tensor images = random_bytes({5, 2, 6, 7}, 12);
  const at::Tensor offsets = at::tensor({0, 0, 8, 8, 3, 5, 4, 4, 1, 7}).view({5, 2});
  const at::Tensor flips = at::tensor({0, 1, 0, 1, 1}).to(at::kBool);
  const at::Tensor out = zd::augment(images, offsets, flips, 4);
  ASSERT_EQ(out.sizes(), images.sizes());
  for (int64_t n = 0; n < 5; ++n)
    for (int64_t c = 0; c < 2; ++c)
      for (int64_t i = 0; i < 6; ++i)
        for (int64_t j = 0; j < 7; ++j) {
          const int64_t jj = flips[n].item<bool>() ? 6 - j : j;
          const int64_t r = i + offsets[n][0].item<int64_t>() - 4, s = jj + offsets[n][1].item<int64_t>() - 4;
          const int64_t expected = (r < 0 || r >= 6 || s < 0 || s >= 7) ? 0 : images[n][c][r][s].item<uint8_t>();
          ASSERT_EQ(out[n][c][i][j].item<uint8_t>(), expected) << n << " " << c << " " << i << " " << j;
        }
}

zd::ImageDataset small_dataset(int64_t n) {
  return {"fashion-mnist", "train", random_bytes({n, 1, 32, 32}, 13), at::arange(n) % 10, 10, {}};
}

TEST(Data, LoaderEpochsArePureFunctionsOfSeedAndEpoch) {
  const zd::ImageDataset ds = small_dataset(10);
  const zd::BatchLoader a(ds, 4, zd::LoaderOptions().train(true).seed(3).hflip(true));
  const zd::BatchLoader b(ds, 4, zd::LoaderOptions().train(true).seed(3).hflip(true));
  ASSERT_EQ(a.size(), 3);  // the last batch of 2 is kept
  std::vector<int64_t> seen;
  for (int64_t i = 0; i < 3; ++i) {
    const zd::Batch x = a.epoch(1)[i], y = b.epoch(1)[i];
    EXPECT_TRUE(at::equal(x.x, y.x));
    EXPECT_TRUE(at::equal(x.y, y.y));
    for (int64_t k = 0; k < x.y.size(0); ++k) seen.push_back(x.y[k].item<int64_t>());
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));  // each sample once
  EXPECT_FALSE(at::equal(a.epoch(1)[0].x, a.epoch(2)[0].x));
  EXPECT_EQ(zd::BatchLoader(ds, 4, zd::LoaderOptions().train(true).drop_last(true)).size(), 2);
  EXPECT_THROW(zd::BatchLoader(ds, 0), c10::Error);

  // Evaluation: in order, unaugmented, normalised by the given statistics.
  const at::Tensor mean = at::tensor({0.5f}), std = at::tensor({0.25f});
  const zd::BatchLoader test(ds, 4, zd::LoaderOptions().mean(mean).std(std));
  const zd::Batch first = test.epoch(0)[0];
  const at::Tensor expected = ds.images.slice(0, 0, 4).to(at::kFloat).div_(255.0).sub_(0.5).div_(0.25);
  EXPECT_TRUE(at::equal(first.x, expected));
  EXPECT_TRUE(at::equal(first.y, ds.labels.slice(0, 0, 4)));
  int64_t batches = 0;
  for (const zd::Batch& batch : test.epoch(0)) batches += batch.y.size(0) > 0;
  EXPECT_EQ(batches, 3);
}

TEST(Data, SubsetIsASeededDrawInOrder) {
  const zd::ImageDataset ds = small_dataset(20);
  const zd::ImageDataset a = ds.subset(6, 1), b = ds.subset(6, 1), c = ds.subset(6, 2);
  EXPECT_EQ(a.size(), 6);
  EXPECT_TRUE(at::equal(a.images, b.images));
  EXPECT_FALSE(at::equal(a.images, c.images));
  EXPECT_EQ(ds.subset(std::nullopt).size(), 20);
  EXPECT_EQ(ds.subset(50).size(), 20);
  EXPECT_THROW(ds.subset(0), std::invalid_argument);
}

}  // namespace
