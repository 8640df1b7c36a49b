// Real data: all 10,000 Fashion-MNIST test images (Debian's dataset-fashion-mnist) through the image path
// (gray 28x28 -> RGB -> preprocessor_config.json) and the trained model, against HF's logits and predictions.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "formats/npy.h"
#include "idx_dataset.h"
#include "image/preprocess.h"
#include "perceiver/perceiver.h"
#include "test_util.h"

namespace perceiver {
namespace {

const std::filesystem::path kDataset = kFashionMnistDir;

std::vector<float> test_set_logits(const ModelOptions& options) {
  return fashion_mnist_test_logits(test::shared_dir() / "models" / "fashion-mnist-conv", options);
}

int argmax10(const float* row) { return static_cast<int>(std::max_element(row, row + 10) - row); }

TEST(FashionMnist, AllTestImagesMatchHuggingFace) {
  ASSERT_TRUE(std::filesystem::exists(kDataset / "t10k-images-idx3-ubyte.gz"))
      << "install Debian's dataset-fashion-mnist (scripts/install-deps.sh does)";
  const auto model_dir = test::shared_dir() / "models" / "fashion-mnist-conv";
  const auto expected = model_dir / "expected";
  nlohmann::json manifest = nlohmann::json::parse(std::ifstream(expected / "manifest.json"));
  std::vector<uint8_t> labels = read_idx_labels(kDataset / "t10k-labels-idx1-ubyte.gz");
  ASSERT_EQ(labels.size(), 10000u);
  const int num_labels = 10;
  std::vector<float> logits = test_set_logits(ModelOptions{});

  NpyArray want_logits = read_npy(expected / "test_logits.npy");
  std::vector<int64_t> want_pred = read_npy(expected / "test_predictions.npy").to_i64();
  ASSERT_EQ(want_pred.size(), 10000u);
  EXPECT_TRUE(test::AllCloseScaled(logits, want_logits.to_f32(), 1e-4));

  int correct = 0, identical = 0, flips_outside_near_ties = 0;
  const auto& near_ties = manifest["near_tie_test_indices_margin_below_1e-2"];
  for (int i = 0; i < 10000; ++i) {
    const int pred = argmax10(&logits[size_t(i) * num_labels]);
    correct += pred == labels[i];
    if (pred == want_pred[i])
      ++identical;
    else if (!near_ties.contains(std::to_string(i)))
      ++flips_outside_near_ties;
  }
  const double accuracy = correct / 10000.0;
  const double want_accuracy = manifest["test_accuracy"];
  std::printf("accuracy %.4f (HF %.4f), predictions identical to HF: %d / 10000\n", accuracy, want_accuracy,
              identical);
  EXPECT_GE(identical, 9990);  // >= 99.9 %
  EXPECT_EQ(flips_outside_near_ties, 0);
  EXPECT_GE(accuracy, want_accuracy - (10000 - identical) / 10000.0);
}

// bf16 (weights and GEMM inputs rounded to bf16, fp32 accumulation): top-1 agreement with HF's fp32
// predictions over the 10,000 test images, and the largest logit deviation.
TEST(FashionMnist, Bf16AgreesWithHuggingFaceFp32) {
  ASSERT_TRUE(std::filesystem::exists(kDataset / "t10k-images-idx3-ubyte.gz"));
  const auto expected = test::shared_dir() / "models" / "fashion-mnist-conv" / "expected";
  ModelOptions options;
  options.precision = Precision::bf16;
  std::vector<float> logits;
  try {
    logits = test_set_logits(options);
  } catch (const Error& e) {
    PERCEIVER_SKIP_FOR_CPU(e.what());  // a CPU without AVX-512 has no bf16 mode
  }
  std::vector<float> want = read_npy(expected / "test_logits.npy").to_f32();
  std::vector<int64_t> want_pred = read_npy(expected / "test_predictions.npy").to_i64();
  int agree = 0;
  double max_err = 0, scale = 1;
  for (size_t i = 0; i < want.size(); ++i) {
    max_err = std::max(max_err, double(std::abs(logits[i] - want[i])));
    scale = std::max(scale, double(std::abs(want[i])));
  }
  for (int i = 0; i < 10000; ++i) agree += argmax10(&logits[size_t(i) * 10]) == want_pred[i];
  std::printf(
      "bf16: top-1 agreement with HF fp32 %d / 10000, max |logit error| %.4f (%.2f%% of max |logit|)\n",
      agree, max_err, 100 * max_err / scale);
  EXPECT_GE(agree, 9950);            // >= 99.5 %
  EXPECT_LE(max_err, 0.05 * scale);  // the golden bf16 tests' bound
}

}  // namespace
}  // namespace perceiver
