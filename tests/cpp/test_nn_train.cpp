// zipml_train end to end, as a user runs it, on a tiny data set written here in the IDX format:
// outputs, --resume continuing to exactly the uninterrupted result, bounded runs, errors.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/serialize.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "temp_dir.h"

namespace {

using GenericDict = c10::impl::GenericDict;

void write_idx(const std::string& path, const at::Tensor& t) {
  std::vector<uint8_t> b = {0, 0, 0x08, static_cast<uint8_t>(t.dim())};
  for (int64_t d : t.sizes())
    for (int shift : {24, 16, 8, 0}) b.push_back(static_cast<uint8_t>((d >> shift) & 0xff));
  const at::Tensor c = t.to(at::kByte).contiguous();
  b.insert(b.end(), c.data_ptr<uint8_t>(), c.data_ptr<uint8_t>() + c.numel());
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

struct Result {
  int status;
  std::string out, err;
};

class Train : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root = zipml_test::make_temp_dir("zipml_train");
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
    for (auto [prefix, n] : {std::pair<const char*, int64_t>{"train", 48}, {"t10k", 20}}) {
      write_idx(root + "/" + prefix + "-images-idx3-ubyte", at::randint(0, 256, {n, 28, 28}, g, at::kByte));
      write_idx(root + "/" + prefix + "-labels-idx1-ubyte", at::arange(n) % 10);
    }
  }
  static void TearDownTestSuite() { zipml_test::remove_tree(root); }

  static Result run(const std::string& args) {
    const std::string out = root + "/stdout", err = root + "/stderr";
    const int rc = std::system((std::string(ZIPML_TRAIN_EXECUTABLE) + " " + args + " > " + out + " 2> " + err).c_str());
    return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, slurp(out), slurp(err)};
  }
  static std::string base(const std::string& out) {
    return "--data-dir " + root + " --out " + out + " --batch-size 16 --epochs 3 --progress off --quiet --seed 4" +
           " --eval-batch-size 8 --bn-calibration 2 --threads 1 --scheme zipml --weight-bits 2 --levels optimal "
           "--grad-bits 8";
  }
  static GenericDict checkpoint(const std::string& out) {
    const std::string bytes = slurp(out + "/checkpoint.pt");
    return torch::pickle_load(std::vector<char>(bytes.begin(), bytes.end())).toGenericDict();
  }
  static std::string root;
};
std::string Train::root;

TEST_F(Train, ResumeContinuesToExactlyTheUninterruptedResult) {
  const std::string full = root + "/full", parts = root + "/parts";
  ASSERT_EQ(run(base(full)).status, 0);
  ASSERT_EQ(run(base(parts) + " --stop-after-epochs 1").status, 0);
  EXPECT_EQ(checkpoint(parts).at("epoch").toInt(), 1);
  EXPECT_EQ(slurp(parts + "/metrics.json").find("\"final\""), std::string::npos);
  const Result resumed = run("--resume --out " + parts + " --progress off --quiet --threads 1");
  ASSERT_EQ(resumed.status, 0) << resumed.err;

  const GenericDict a = checkpoint(full), b = checkpoint(parts);
  EXPECT_EQ(a.at("epoch").toInt(), 3);
  EXPECT_EQ(b.at("step").toInt(), 9);
  const auto ma = a.at("model").toGenericDict(), mb = b.at("model").toGenericDict();
  ASSERT_EQ(ma.size(), mb.size());
  for (const auto& item : ma)
    EXPECT_TRUE(at::equal(item.value().toTensor(), mb.at(item.key()).toTensor())) << item.key();
  EXPECT_EQ(a.at("zipml_rng"), b.at("zipml_rng"));
  EXPECT_EQ(a.at("zipml_rng").toGenericDict().at("layer1.0.conv1").toGenericDict().at("step").toInt(), 9);
  const auto ba = a.at("optimizer").toGenericDict().at("momentum_buffer").toList();
  const auto bb = b.at("optimizer").toGenericDict().at("momentum_buffer").toList();
  for (size_t i = 0; i < ba.size(); ++i) EXPECT_TRUE(at::equal(ba.get(i).toTensor(), bb.get(i).toTensor())) << i;
  // The metrics agree too, but for the timings.
  const auto ha = a.at("history").toList(), hb = b.at("history").toList();
  ASSERT_EQ(ha.size(), 3u);
  for (size_t i = 0; i < 3; ++i)
    for (const char* key : {"epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc"})
      EXPECT_EQ(ha.get(i).toGenericDict().at(key), hb.get(i).toGenericDict().at(key)) << key << " of epoch " << i + 1;
}

TEST_F(Train, WritesMetricsAndAPythonStyleCheckpointAtomically) {
  const std::string out = root + "/outputs";
  const Result r = run(base(out) + " --max-steps 4");
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string csv = slurp(out + "/metrics.csv");
  EXPECT_EQ(csv.rfind("epoch,step,lr,train_loss,train_acc,test_loss,test_acc,epoch_seconds,elapsed_seconds\r\n", 0),
            0u);
  const std::string json = slurp(out + "/metrics.json");
  for (const char* key : {"\"settings\"", "\"layers\"", "\"environment\"", "\"final\"", "\"test_acc_nearest_eval\"",
                          "\"max_steps\": 4", "\"layer1.0.conv1\": \"zipml\"", "\"conv1\": \"fp32\""})
    EXPECT_NE(json.find(key), std::string::npos) << key;
  const GenericDict ckpt = checkpoint(out);
  EXPECT_EQ(ckpt.at("step").toInt(), 4);  // bounded by --max-steps: epoch 2 stopped after 1 of 3 steps
  EXPECT_EQ(ckpt.at("epoch").toInt(), 2);
  const auto model = ckpt.at("model").toGenericDict();
  EXPECT_TRUE(model.contains("layer3.2.bn2.num_batches_tracked"));
  EXPECT_TRUE(model.contains("fc.bias"));
  for (const std::string& name : zipml_test::list_dir(out))  // no temporary file left behind
    EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
}

TEST_F(Train, ErrorsNameTheFlagOrTheFile) {
  Result r = run("--weight-bits 9 --data-dir " + root);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("--weight-bits must be from 1 to 8, got 9"), std::string::npos) << r.err;
  r = run("--levels best");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("argument --levels: invalid choice: 'best' (choose from 'uniform', 'optimal')"),
            std::string::npos);
  r = run("--epochs two");
  EXPECT_NE(r.err.find("argument --epochs: invalid int value: 'two'"), std::string::npos) << r.err;
  r = run("--frobnicate 1");
  EXPECT_NE(r.err.find("unrecognized argument: --frobnicate"), std::string::npos) << r.err;
  r = run("--data-dir " + root + "/nowhere --out " + root + "/x");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("Fashion-MNIST not found"), std::string::npos) << r.err;
  const std::string out = root + "/conflict";
  ASSERT_EQ(run(base(out) + " --max-steps 1").status, 0);
  r = run("--resume --out " + out + " --lr 0.5");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.err.find("these flags differ: --lr 0.5 (the run used 0.1)"), std::string::npos) << r.err;
  r = run("--resume " + root + "/nothing-here.pt");
  EXPECT_NE(r.err.find("no checkpoint at"), std::string::npos) << r.err;
  r = run("--help");
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("--bn-calibration"), std::string::npos);
}

}  // namespace
