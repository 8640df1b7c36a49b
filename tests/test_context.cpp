// One immutable model, many contexts: results independent of which context (or thread) runs them, and the
// public pipeline (images -> logits / top-k / embeddings) equal to the network on preprocessed pixels.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cmath>
#include <thread>

#include "formats/npy.h"
#include "perceiver/perceiver.h"
#include "test_util.h"

namespace perceiver {
namespace {

struct Golden {
  std::vector<float> pixels, logits;
  int B = 0, H = 0, W = 0;
};

Golden read_golden(const std::string& variant) {
  const auto dir = test::vectors_dir() / variant;
  NpyArray p = read_npy(dir / "pixel_values.npy");
  Golden g;
  g.B = int(p.shape[0]);
  g.H = int(p.shape[2]);
  g.W = int(p.shape[3]);
  g.pixels = p.to_f32();
  g.logits = read_npy(dir / "logits.npy").to_f32();
  return g;
}

class ContextTest : public ::testing::TestWithParam<std::string> {};

// Two threads, one model, a context each, every call repeated: bit-identical to a serial run on a third
// context, and to HF within the parity bar.
TEST_P(ContextTest, TwoThreadsOnOneModelGiveTheSerialResults) {
  const Golden g = read_golden(GetParam());
  ModelOptions options;
  options.threads = 1;  // each context on one core: the two threads run truly in parallel
  auto model = Model::load(test::vectors_dir() / GetParam(), options);
  const int labels = model->info().num_labels;
  std::vector<float> serial(size_t(g.B) * labels);
  model->create_context()->logits(g.pixels.data(), g.B, g.H, g.W, serial.data());
  EXPECT_TRUE(test::AllCloseScaled(serial, g.logits, 1e-4));

  std::vector<std::vector<float>> results(2);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      auto ctx = model->create_context();
      std::vector<float> out(serial.size());
      for (int rep = 0; rep < 20; ++rep) {
        ctx->logits(g.pixels.data(), g.B, g.H, g.W, out.data());
        if (rep == 0) results[t] = out;
        if (out != results[t]) results[t].assign(1, NAN);  // any change between repeats fails below
      }
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 2; ++t) EXPECT_EQ(results[t], serial) << "thread " << t;
}

INSTANTIATE_TEST_SUITE_P(Vectors, ContextTest, ::testing::Values("conv-tiny", "fourier-tiny", "learned-tiny"));

long max_rss_kb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

// A second context costs its activations only, not a second copy of the weights: a full-size model's
// context (one 224x224 image, about 40 MB of activations) adds far less than its 195 MB of packed weights.
TEST(Context, ASecondContextCostsItsWorkspaceOnly) {
  const std::string config = R"({"architectures": ["PerceiverForImageClassificationConvProcessing"],
    "num_latents": 512, "d_latents": 1024, "d_model": 322, "num_blocks": 1, "num_self_attends_per_block": 6,
    "num_self_attention_heads": 8, "num_cross_attention_heads": 1, "qk_channels": null, "v_channels": null,
    "cross_attention_widening_factor": 1, "self_attention_widening_factor": 1,
    "id2label": {"0": "a", "1": "b"}})";
  ModelOptions options;
  options.threads = 2;
  auto model = Model::create_random(config, 3, options);
  std::vector<float> pixels(3 * 224 * 224, 0.5f), a(2), b(2);
  auto first = model->create_context();
  first->logits(pixels.data(), 1, 224, 224, a.data());
  const long before = max_rss_kb();
  auto second = model->create_context();
  second->logits(pixels.data(), 1, 224, 224, b.data());
  const long added_mb = (max_rss_kb() - before) / 1024;
  EXPECT_EQ(a, b);
  EXPECT_LT(added_mb, 60) << "a second context should hold activations (~40 MB), not weights";
}

// The pipeline on decoded images equals preprocess() + the network, and top_k is the softmax's ranking.
TEST(Context, ImagePipelineEqualsPreprocessPlusForward) {
  auto model = Model::load(test::shared_dir() / "models" / "fashion-mnist-conv");
  ASSERT_TRUE(model->info().has_preprocessor);
  const Image cat = decode_image_file(test::source_dir() / "samples" / "cat.jpg");
  std::vector<uint8_t> gray(40 * 30);
  for (size_t i = 0; i < gray.size(); ++i) gray[i] = uint8_t(i * 7);
  const Image small = image_from_pixels(gray.data(), 40, 30, 1);
  auto ctx = model->create_context();
  const Tensor batched = ctx->logits({cat, small, cat}, 2);
  ASSERT_EQ(batched.shape, (std::vector<int64_t>{3, model->info().num_labels}));
  for (int i = 0; i < 3; ++i) {
    const Tensor pixels = model->preprocess(i == 1 ? small : cat);
    std::vector<float> solo(model->info().num_labels);
    ctx->logits(pixels.data.data(), 1, int(pixels.shape[2]), int(pixels.shape[3]), solo.data());
    std::vector<float> row(batched.data.begin() + i * solo.size(), batched.data.begin() + (i + 1) * solo.size());
    EXPECT_TRUE(test::AllCloseScaled(row, solo, 1e-5)) << "image " << i;
  }
  const auto top = ctx->classify({cat}, 3)[0];
  ASSERT_EQ(top.size(), 3u);
  EXPECT_GE(top[0].probability, top[1].probability);
  double sum = 0, max_logit = -1e30;
  for (float v : std::vector<float>(batched.data.begin(), batched.data.begin() + model->info().num_labels))
    max_logit = std::max(max_logit, double(v));
  for (int j = 0; j < model->info().num_labels; ++j) sum += std::exp(batched.data[j] - max_logit);
  EXPECT_NEAR(top[0].probability, std::exp(batched.data[top[0].id] - max_logit) / sum, 1e-6);
  EXPECT_EQ(top[0].label, model->labels()[top[0].id]);

  const Tensor mean = ctx->embed({cat, small}, Pool::mean);
  const Tensor latents = ctx->embed({cat, small}, Pool::latents);
  const Tensor decoder = ctx->embed({cat}, Pool::decoder);
  const int64_t L = model->info().num_latents, D = model->info().d_latents;
  EXPECT_EQ(mean.shape, (std::vector<int64_t>{2, D}));
  EXPECT_EQ(latents.shape, (std::vector<int64_t>{2, L, D}));
  EXPECT_EQ(decoder.shape, (std::vector<int64_t>{1, D}));
  double m0 = 0;
  for (int64_t l = 0; l < L; ++l) m0 += latents.data[size_t(l * D)];
  EXPECT_NEAR(mean.data[0], m0 / L, 1e-5);
}

TEST(Context, ImageErrorsNameTheProblem) {
  auto model = Model::load(test::vectors_dir() / "conv-tiny");  // no preprocessor_config.json
  EXPECT_FALSE(model->info().has_preprocessor);
  const Image img = image_from_pixels(std::vector<uint8_t>(12, 1).data(), 2, 2, 3);
  try {
    model->create_context()->classify({img});
    FAIL() << "classified without a preprocessor";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::model);
    EXPECT_NE(std::string(e.what()).find("preprocessor_config.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(image_from_pixels(nullptr, 2, 2, 2), Error);
  EXPECT_THROW(image_from_pixels(std::vector<uint8_t>(12).data(), 2, 2, 3, 5), Error);
  const char junk[] = "not an image at all";
  try {
    decode_image(junk, sizeof junk, "upload.jpg");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::bad_input);
    EXPECT_NE(std::string(e.what()).find("upload.jpg"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace perceiver
