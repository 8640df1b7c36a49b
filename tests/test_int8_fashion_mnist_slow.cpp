// --precision int8 on real data: all 10,000 Fashion-MNIST test images (Debian's dataset-fashion-mnist)
// through the image path and the trained model, against HF's fp32 predictions and the labels.
//
// Bars (issue 17): top-1 agreement with HF fp32 >= 99.5 %, accuracy within 0.3 points of HF's. Reported too:
// the mean cosine of the logits and the largest logit deviation.
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
constexpr int kMinAgreement = 9950;         // of 10,000: 99.5 %
constexpr double kMaxAccuracyLoss = 0.003;  // 0.3 points

std::vector<float> int8_test_set_logits(const std::string& backend) {
  ModelOptions options;
  options.precision = Precision::int8;
  options.backend = backend;
  return fashion_mnist_test_logits(test::shared_dir() / "models" / "fashion-mnist-conv", options);
}

int argmax10(const float* row) { return static_cast<int>(std::max_element(row, row + 10) - row); }

TEST(FashionMnistInt8, AgreesWithHuggingFaceFp32) {
  ASSERT_TRUE(std::filesystem::exists(kDataset / "t10k-images-idx3-ubyte.gz"))
      << "install Debian's dataset-fashion-mnist (scripts/install-deps.sh does)";
  const auto expected = test::shared_dir() / "models" / "fashion-mnist-conv" / "expected";
  nlohmann::json manifest = nlohmann::json::parse(std::ifstream(expected / "manifest.json"));
  std::vector<uint8_t> labels = read_idx_labels(kDataset / "t10k-labels-idx1-ubyte.gz");
  std::vector<float> want = read_npy(expected / "test_logits.npy").to_f32();
  std::vector<int64_t> want_pred = read_npy(expected / "test_predictions.npy").to_i64();
  ASSERT_EQ(want_pred.size(), 10000u);
  std::vector<float> logits;
  try {
    logits = int8_test_set_logits("auto");
  } catch (const Error& e) {
    PERCEIVER_SKIP_FOR_CPU(e.what());  // a CPU without VNNI has no fast int8 mode
  }
  ASSERT_EQ(logits.size(), want.size());
  int agree = 0, correct = 0;
  double max_err = 0, scale = 1, cosine_sum = 0, cosine_min = 1;
  for (size_t i = 0; i < want.size(); ++i) {
    max_err = std::max(max_err, double(std::abs(logits[i] - want[i])));
    scale = std::max(scale, double(std::abs(want[i])));
  }
  for (int i = 0; i < 10000; ++i) {
    const float* g = &logits[size_t(i) * 10];
    const float* h = &want[size_t(i) * 10];
    const int pred = argmax10(g);
    agree += pred == want_pred[i];
    correct += pred == labels[i];
    double dot = 0, gg = 0, hh = 0;
    for (int c = 0; c < 10; ++c)
      dot += double(g[c]) * h[c], gg += double(g[c]) * g[c], hh += double(h[c]) * h[c];
    const double cosine = dot / std::sqrt(gg * hh);
    cosine_sum += cosine;
    cosine_min = std::min(cosine_min, cosine);
  }
  const double accuracy = correct / 10000.0, want_accuracy = manifest["test_accuracy"];
  std::printf(
      "int8: top-1 agreement with HF fp32 %d / 10000, accuracy %.4f (HF %.4f), logits cosine mean %.6f min "
      "%.6f, max |logit error| %.4f (%.2f%% of max |logit|)\n",
      agree, accuracy, want_accuracy, cosine_sum / 10000, cosine_min, max_err, 100 * max_err / scale);
  EXPECT_GE(agree, kMinAgreement);
  EXPECT_GE(accuracy, want_accuracy - kMaxAccuracyLoss);
  EXPECT_LE(accuracy, want_accuracy + kMaxAccuracyLoss);
}

// A full-size model (deepmind/vision-perceiver-conv's shapes, random weights): int8 logits against fp32's on
// the same images. Bars (issue 17): the same top-1 and cosine(logits) >= 0.995 for every image.
TEST(FullSizeInt8, LogitsCloseToFp32) {
  const int B = 2, H = 224, W = 224;
  std::vector<float> pixels(size_t(B) * 3 * H * W);
  uint32_t state = 7;
  for (auto& p : pixels) {  // values in about [-2, 2], like normalised images
    state = state * 1664525u + 1013904223u;
    p = static_cast<float>(state >> 8) * (4.0f / 16777216.0f) - 2.0f;
  }
  auto logits_at = [&](Precision precision) {
    ModelOptions options;
    options.precision = precision;
    auto model = Model::create_random(vision_perceiver_conv_config_json(), 1, options);
    std::vector<float> logits(size_t(B) * 1000);
    model->classify(pixels.data(), B, H, W, logits.data());
    return logits;
  };
  std::vector<float> want = logits_at(Precision::fp32), got;
  try {
    got = logits_at(Precision::int8);
  } catch (const Error& e) {
    PERCEIVER_SKIP_FOR_CPU(e.what());
  }
  for (int b = 0; b < B; ++b) {
    const float* g = &got[size_t(b) * 1000];
    const float* h = &want[size_t(b) * 1000];
    double dot = 0, gg = 0, hh = 0;
    for (int c = 0; c < 1000; ++c)
      dot += double(g[c]) * h[c], gg += double(g[c]) * g[c], hh += double(h[c]) * h[c];
    const double cosine = dot / std::sqrt(gg * hh);
    std::printf("full-size conv, image %d: int8 vs fp32 logits cosine %.6f, top-1 %ld vs %ld\n", b, cosine,
                long(std::max_element(g, g + 1000) - g), long(std::max_element(h, h + 1000) - h));
    EXPECT_GE(cosine, 0.995);
    EXPECT_EQ(std::max_element(g, g + 1000) - g, std::max_element(h, h + 1000) - h);
  }
}

}  // namespace
}  // namespace perceiver
