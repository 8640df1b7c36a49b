// The C API (perceiver_c.h): results equal to HF's golden vectors and to the C++ API, statuses = the CLI's
// exit codes, error messages naming the file or option, no crash on NULL.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "perceiver/io.h"
#include "perceiver/perceiver.h"
#include "perceiver/perceiver_c.h"
#include "test_util.h"

namespace {

using perceiver::test::shared_dir;
using perceiver::test::vectors_dir;

std::string fashion_dir() { return (shared_dir() / "models" / "fashion-mnist-conv").string(); }
std::string fashion_image(const char* name) {
  return (shared_dir() / "models" / "fashion-mnist-conv" / "expected" / "images" / name).string();
}

struct ModelHandle {
  perceiver_model* model = nullptr;
  ~ModelHandle() { perceiver_model_free(model); }
};

// The network on HF's pixel_values: logits within 1e-4 of HF's (absolute), model-level and per context.
TEST(CApi, ForwardMatchesGoldenLogits) {
  for (const char* variant : {"conv-tiny", "fourier-tiny", "learned-tiny"}) {
    const auto dir = vectors_dir() / variant;
    const perceiver::NpyArray pixels = perceiver::read_npy(dir / "pixel_values.npy");
    const std::vector<float> expected = perceiver::read_npy(dir / "logits.npy").to_f32();
    char err[256];
    ModelHandle m;
    m.model = perceiver_model_load(dir.c_str(), R"({"threads": 2, "precision": "fp32"})", err, sizeof err);
    ASSERT_NE(m.model, nullptr) << err;
    const int B = int(pixels.shape[0]), H = int(pixels.shape[2]), W = int(pixels.shape[3]);
    ASSERT_EQ(size_t(B) * perceiver_model_num_labels(m.model), expected.size());
    std::vector<float> logits(expected.size()), again(expected.size());
    ASSERT_EQ(perceiver_forward(m.model, pixels.to_f32().data(), B, H, W, logits.data(), err, sizeof err), 0)
        << err;
    for (size_t i = 0; i < logits.size(); ++i)
      EXPECT_NEAR(logits[i], expected[i], 1e-4) << variant << " " << i;

    perceiver_context* context = perceiver_context_new(m.model, err, sizeof err);
    ASSERT_NE(context, nullptr) << err;
    ASSERT_EQ(perceiver_forward_ctx(context, pixels.to_f32().data(), B, H, W, again.data(), err, sizeof err),
              0);
    EXPECT_EQ(logits, again) << variant;
    perceiver_context_free(context);
  }
}

TEST(CApi, ModelQueries) {
  char err[256];
  ModelHandle m;
  m.model = perceiver_model_load(fashion_dir().c_str(), nullptr, err, sizeof err);
  ASSERT_NE(m.model, nullptr) << err;
  EXPECT_EQ(perceiver_model_num_labels(m.model), 10);
  EXPECT_STREQ(perceiver_model_label(m.model, 9), "Ankle boot");
  EXPECT_EQ(perceiver_model_label(m.model, 10), nullptr);
  EXPECT_EQ(perceiver_model_label(m.model, -1), nullptr);
  int h = 0, w = 0;
  perceiver_model_image_size(m.model, &h, &w);
  EXPECT_EQ(h, 56);
  EXPECT_EQ(w, 56);
  EXPECT_EQ(perceiver_model_num_latents(m.model), 64);
  EXPECT_EQ(perceiver_model_d_latents(m.model), 128);
  EXPECT_STREQ(perceiver_version(), PERCEIVER_VERSION);
}

// A file, its bytes and its raw pixels give the C++ API's logits; the top-1 is HF's; preprocess and embed
// equal the C++ API's.
TEST(CApi, ClassifyPreprocessEmbed) {
  char err[256];
  ModelHandle m;
  m.model = perceiver_model_load(fashion_dir().c_str(), R"({"threads": 2})", err, sizeof err);
  ASSERT_NE(m.model, nullptr) << err;
  const std::string file = fashion_image("00000_9_ankle_boot.png");
  std::vector<float> from_file(10), from_bytes(10), from_pixels(10), from_context(10);
  ASSERT_EQ(perceiver_classify_file(m.model, file.c_str(), from_file.data(), err, sizeof err), 0) << err;
  std::ifstream in(file, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(
      perceiver_classify_encoded(m.model, bytes.data(), bytes.size(), from_bytes.data(), err, sizeof err), 0);
  EXPECT_EQ(from_file, from_bytes);

  const perceiver::Image image = perceiver::decode_image_file(file);
  // The gray PNG's pixels as a gray buffer with padded rows.
  std::vector<uint8_t> gray(28 * 32, 0xee);
  for (int y = 0; y < 28; ++y)
    for (int x = 0; x < 28; ++x) gray[y * 32 + x] = image.rgb[(y * 28 + x) * 3];
  ASSERT_EQ(
      perceiver_classify_pixels(m.model, gray.data(), 28, 28, 1, 32, from_pixels.data(), err, sizeof err), 0)
      << err;
  EXPECT_EQ(from_file, from_pixels);

  perceiver_context* context = perceiver_context_new(m.model, err, sizeof err);
  ASSERT_EQ(perceiver_classify_file_ctx(context, file.c_str(), from_context.data(), err, sizeof err), 0)
      << err;
  EXPECT_EQ(from_file, from_context);
  perceiver_context_free(context);

  auto cpp = perceiver::Model::load(fashion_dir());
  EXPECT_EQ(from_file, cpp->create_context()->logits({image}).data);

  int ids[3];
  float probabilities[3];
  ASSERT_EQ(perceiver_top_k(m.model, from_file.data(), 3, ids, probabilities), 3);
  EXPECT_EQ(ids[0], 9);  // HF's top-1 for this image (expected/images_logits.npy)
  EXPECT_GT(probabilities[0], probabilities[1]);
  EXPECT_EQ(perceiver_top_k(m.model, from_file.data(), 20, nullptr, nullptr), 10);
  EXPECT_EQ(perceiver_top_k(m.model, from_file.data(), 0, ids, probabilities), 0);

  int h = 0, w = 0;
  std::vector<float> pixels(3 * 56 * 56);
  EXPECT_EQ(perceiver_preprocess_file(m.model, file.c_str(), pixels.data(), 10, &h, &w, err, sizeof err), 2);
  EXPECT_NE(std::string(err).find("9408"), std::string::npos) << err;
  ASSERT_EQ(
      perceiver_preprocess_file(m.model, file.c_str(), pixels.data(), pixels.size(), &h, &w, err, sizeof err),
      0);
  EXPECT_EQ(h, 56);
  EXPECT_EQ(pixels, cpp->preprocess(image).data);

  std::vector<float> mean(128), latents(64 * 128), decoder(128);
  ASSERT_EQ(perceiver_embed_file(m.model, file.c_str(), "mean", mean.data(), mean.size(), err, sizeof err), 0)
      << err;
  ASSERT_EQ(
      perceiver_embed_file(m.model, file.c_str(), "latents", latents.data(), latents.size(), err, sizeof err),
      0);
  ASSERT_EQ(
      perceiver_embed_file(m.model, file.c_str(), "decoder", decoder.data(), decoder.size(), err, sizeof err),
      0);
  EXPECT_EQ(mean, cpp->create_context()->embed({image}, perceiver::Pool::mean).data);
  EXPECT_EQ(latents, cpp->create_context()->embed({image}, perceiver::Pool::latents).data);
  EXPECT_EQ(decoder, cpp->create_context()->embed({image}, perceiver::Pool::decoder).data);
  EXPECT_EQ(perceiver_embed_file(m.model, file.c_str(), "latents", mean.data(), mean.size(), err, sizeof err),
            2);
  EXPECT_EQ(perceiver_embed_file(m.model, file.c_str(), "max", mean.data(), mean.size(), err, sizeof err), 2);
}

// Contexts on two threads at once: the serial results.
TEST(CApi, ContextsRunInParallel) {
  char err[256];
  ModelHandle m;
  m.model = perceiver_model_load(fashion_dir().c_str(), R"({"threads": 1})", err, sizeof err);
  ASSERT_NE(m.model, nullptr) << err;
  const std::string files[2] = {fashion_image("00018_8_bag.png"), fashion_image("00004_6_shirt.png")};
  std::vector<float> serial[2], parallel[2];
  for (int i = 0; i < 2; ++i) {
    serial[i].resize(10);
    parallel[i].resize(10);
    ASSERT_EQ(perceiver_classify_file(m.model, files[i].c_str(), serial[i].data(), err, sizeof err), 0)
        << err;
  }
  int status[2] = {-1, -1};
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) {
    threads.emplace_back([&, i] {
      char thread_err[256];
      perceiver_context* context = perceiver_context_new(m.model, thread_err, sizeof thread_err);
      for (int repeat = 0; repeat < 3; ++repeat)
        status[i] = perceiver_classify_file_ctx(context, files[i].c_str(), parallel[i].data(), thread_err,
                                                sizeof thread_err);
      perceiver_context_free(context);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(status[i], 0);
    EXPECT_EQ(serial[i], parallel[i]);
  }
}

// Failures: the CLI's exit codes, one line naming the file or option; truncation; NULL handles.
TEST(CApi, ErrorsNameTheFileAndCarryTheExitCode) {
  char err[256];
  const std::string missing = (perceiver::test::temp_dir("capi") / "no-model").string();
  EXPECT_EQ(perceiver_model_load(missing.c_str(), nullptr, err, sizeof err), nullptr);
  EXPECT_NE(std::string(err).find(missing), std::string::npos) << err;
  EXPECT_EQ(perceiver_model_load(fashion_dir().c_str(), R"({"precision": "fp64"})", err, sizeof err),
            nullptr);
  EXPECT_NE(std::string(err).find("fp64"), std::string::npos) << err;
  EXPECT_EQ(perceiver_model_load(fashion_dir().c_str(), R"({"thread": 2})", err, sizeof err), nullptr);
  EXPECT_NE(std::string(err).find("thread"), std::string::npos) << err;
  EXPECT_EQ(perceiver_model_load(fashion_dir().c_str(), "{threads", err, sizeof err), nullptr);
  EXPECT_NE(std::string(err).find("options_json"), std::string::npos) << err;

  EXPECT_EQ(perceiver_model_load(fashion_dir().c_str(), R"({"pin_threads": "always"})", err, sizeof err),
            nullptr);
  EXPECT_NE(std::string(err).find("pin_threads 'always'"), std::string::npos) << err;

  ModelHandle m;
  m.model =
      perceiver_model_load(fashion_dir().c_str(), R"({"threads": 2, "pin_threads": "off"})", err, sizeof err);
  ASSERT_NE(m.model, nullptr) << err;
  std::vector<float> logits(10);
  const std::string not_image = (perceiver::test::source_dir() / "CMakeLists.txt").string();
  EXPECT_EQ(perceiver_classify_file(m.model, not_image.c_str(), logits.data(), err, sizeof err), 3);
  EXPECT_EQ(std::string(err).rfind(not_image + ": ", 0), 0u) << err;
  EXPECT_EQ(std::string(err).find('\n'), std::string::npos);
  EXPECT_EQ(perceiver_classify_encoded(m.model, "GIF89a", 6, logits.data(), err, sizeof err), 3);
  std::vector<float> pixels(3 * 8 * 8);
  EXPECT_EQ(perceiver_forward(m.model, pixels.data(), 0, 8, 8, logits.data(), err, sizeof err), 2);
  EXPECT_NE(std::string(err).find("batch"), std::string::npos) << err;

  // Truncation to the buffer, NUL-terminated; a NULL buffer is allowed.
  char tiny[8];
  EXPECT_EQ(perceiver_classify_file(m.model, not_image.c_str(), logits.data(), tiny, sizeof tiny), 3);
  EXPECT_EQ(std::string(tiny), not_image.substr(0, 7));
  EXPECT_EQ(perceiver_classify_file(m.model, not_image.c_str(), logits.data(), nullptr, 0), 3);

  // NULL handles and arrays: usage errors, no crash.
  EXPECT_EQ(perceiver_classify_file(nullptr, fashion_image("00018_8_bag.png").c_str(), logits.data(), err,
                                    sizeof err),
            2);
  EXPECT_EQ(perceiver_classify_file(m.model, nullptr, logits.data(), err, sizeof err), 2);
  EXPECT_EQ(perceiver_classify_file_ctx(nullptr, not_image.c_str(), logits.data(), err, sizeof err), 2);
  EXPECT_EQ(perceiver_classify_pixels(m.model, nullptr, 4, 4, 3, 0, logits.data(), err, sizeof err) != 0,
            true);
  EXPECT_EQ(perceiver_classify_pixels(m.model, reinterpret_cast<const unsigned char*>(pixels.data()), 4, 4, 2,
                                      0, logits.data(), err, sizeof err),
            3);
  EXPECT_EQ(perceiver_model_num_labels(nullptr), 0);
  EXPECT_EQ(perceiver_context_new(nullptr, err, sizeof err), nullptr);
  perceiver_model_free(nullptr);
  perceiver_context_free(nullptr);
}

}  // namespace
