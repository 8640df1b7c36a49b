// The real task of docs/train-head.md: the trained Fashion-MNIST conv Perceiver gets a freshly initialised
// classification decoder, trained on frozen encoder latents of 6,000 training images (the first 600 of each
// class, file order) of Debian's dataset-fashion-mnist, then scored on all 10,000 test images. Also checks
// that training is deterministic (bit-identical weights for the same seed, whatever the thread count) and
// that the exported model directory classifies exactly as the trained head does.
#include <omp.h>

#include <chrono>
#include <cstring>

#include "idx_dataset.h"
#include "image/preprocess.h"
#include "model/config.h"
#include "perceiver/perceiver.h"
#include "test_util.h"
#include "train/dataset.h"
#include "train/export.h"
#include "train/trainer.h"

namespace perceiver {
namespace {

const std::filesystem::path kDataset = "/usr/share/datasets/fashion-mnist";

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<std::vector<float>> weights_of(train::ClassifierHead<float>& head) {
  std::vector<std::vector<float>> out;
  for (auto* p : head.params()) out.push_back(p->value);
  return out;
}

TEST(TrainHead, FashionMnistFreshDecoder) {
  ASSERT_TRUE(std::filesystem::exists(kDataset / "train-images-idx3-ubyte.gz"))
      << "install Debian's dataset-fashion-mnist (scripts/install-deps.sh does)";
  const auto model_dir = test::shared_dir() / "models" / "fashion-mnist-conv";
  const IdxImages train_images = read_idx_images(kDataset / "train-images-idx3-ubyte.gz");
  const std::vector<uint8_t> train_labels_all = read_idx_labels(kDataset / "train-labels-idx1-ubyte.gz");
  const IdxImages test_images = read_idx_images(kDataset / "t10k-images-idx3-ubyte.gz");
  const std::vector<uint8_t> test_labels_u8 = read_idx_labels(kDataset / "t10k-labels-idx1-ubyte.gz");

  // The first 600 images of each class, in file order.
  std::vector<int64_t> picked;
  std::vector<int> per_class(10, 0), train_labels;
  for (int64_t i = 0; i < train_images.count && picked.size() < 6000; ++i)
    if (per_class[train_labels_all[i]] < 600) {
      ++per_class[train_labels_all[i]];
      picked.push_back(i);
      train_labels.push_back(train_labels_all[i]);
    }
  ASSERT_EQ(picked.size(), 6000u);
  std::vector<int> test_labels(test_labels_u8.begin(), test_labels_u8.end());

  const PreprocessorConfig prep = load_preprocessor_config(model_dir / "preprocessor_config.json");
  const PerceiverConfig config = load_config(model_dir / "config.json");
  auto model = Model::load(model_dir);
  const auto labels = model->info().labels;

  auto t0 = std::chrono::steady_clock::now();
  train::FeatureStore train_features = train::encode_latents(
      *model, 6000, [&](int64_t i) { return idx_image_rgb(train_images, picked[i]); }, 100, false);
  train::FeatureStore test_features = train::encode_latents(
      *model, test_images.count, [&](int64_t i) { return idx_image_rgb(test_images, i); }, 100, false);
  const double encode_s = seconds_since(t0);

  train::TrainOptions options;
  options.init_std = train::config_initializer_range(model_dir);
  options.seed = 0;
  std::vector<int64_t> train_idx(6000), test_idx(test_images.count), no_val;
  for (int64_t i = 0; i < 6000; ++i) train_idx[i] = i;
  for (int64_t i = 0; i < test_images.count; ++i) test_idx[i] = i;

  t0 = std::chrono::steady_clock::now();
  train::ClassifierHead<float> head(config, 10);
  auto history = train::train_head(head, train_features, train_labels, train_idx, no_val, options);
  const double train_s = seconds_since(t0);
  train::EvalStats test = train::evaluate_head(head, test_features, test_labels, test_idx);
  std::printf("encode %.1f s (16,000 images), train %.1f s (%d epochs), final train loss %.4f acc %.2f%%\n",
              encode_s, train_s, options.epochs, history.back().train_loss,
              100 * history.back().train_accuracy);
  std::printf("test accuracy %.2f%% (loss %.4f) on %lld images; the original decoder: 89.79%%\n",
              100 * test.accuracy, test.loss, (long long)test_images.count);
  EXPECT_GE(test.accuracy, 0.85);

  // Determinism: the same seed again, on one thread, gives the same bits.
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  train::ClassifierHead<float> again(config, 10);
  train::train_head(again, train_features, train_labels, train_idx, no_val, options);
  omp_set_num_threads(threads);
  auto a = weights_of(head), b = weights_of(again);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_EQ(0, std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)))
        << head.params()[i]->name;

  // The exported directory loads and classifies as the head does.
  const auto out_dir = test::temp_dir("train_head_slow") / "fashion-fresh";
  train::write_model_dir(model_dir, {}, out_dir, head, labels, prep);
  auto trained = Model::load(out_dir);
  const int n = 256;
  std::vector<float> pixels(size_t(n) * 3 * 56 * 56), logits(size_t(n) * 10);
  for (int i = 0; i < n; ++i)
    preprocess(idx_image_rgb(test_images, i), prep, &pixels[size_t(i) * 3 * 56 * 56]);
  trained->classify(pixels.data(), n, 56, 56, logits.data());
  std::vector<float> want(test.logits.begin(), test.logits.begin() + size_t(n) * 10);
  EXPECT_TRUE(test::AllCloseScaled(logits, want, 1e-4));
}

}  // namespace
}  // namespace perceiver
