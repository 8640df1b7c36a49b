// The C API (perceiver_c.h): results equal to HF's golden vectors and to the C++ API, statuses = the CLI's
// exit codes, error messages naming the file or argument, no crash on NULL.
#include <gtest/gtest.h>

#include <cmath>
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
    const int K = perceiver_model_num_labels(m.model);
    ASSERT_EQ(size_t(B) * K, expected.size());
    std::vector<float> logits(expected.size()), again(expected.size());
    ASSERT_EQ(perceiver_forward(m.model, pixels.to_f32().data(), B, H, W, logits.data(), err, sizeof err), 0)
        << err;
    EXPECT_STREQ(err, "");
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
  EXPECT_EQ(perceiver_model_image_size(m.model, &h, &w), 0);
  EXPECT_EQ(h, 56);
  EXPECT_EQ(w, 56);
  int L = 0, D = 0;
  perceiver_model_latent_shape(m.model, &L, &D);
  EXPECT_EQ(L, 64);
  EXPECT_EQ(D, 128);
  EXPECT_EQ(perceiver_model_embedding_size(m.model, PERCEIVER_POOL_MEAN), 128u);
  EXPECT_EQ(perceiver_model_embedding_size(m.model, PERCEIVER_POOL_LATENTS), 64u * 128u);
  EXPECT_EQ(perceiver_model_embedding_size(m.model, PERCEIVER_POOL_DECODER), 128u);
  EXPECT_NE(std::string(perceiver_model_config_json(m.model)).find("\"id2label\""), std::string::npos);
  EXPECT_STREQ(perceiver_version(), PERCEIVER_VERSION);

  // A model without preprocessor_config.json: no image size.
  ModelHandle tiny;
  tiny.model = perceiver_model_load((vectors_dir() / "conv-tiny").c_str(), nullptr, err, sizeof err);
  ASSERT_NE(tiny.model, nullptr) << err;
  EXPECT_EQ(perceiver_model_image_size(tiny.model, &h, &w), PERCEIVER_ERR_MODEL);
  EXPECT_EQ(h, 0);
}

// Images from a file, bytes and raw pixels give the C++ API's logits; the top-1 is HF's.
TEST(CApi, ClassifyImagesEveryWay) {
  char err[256];
  ModelHandle m;
  m.model = perceiver_model_load(fashion_dir().c_str(), R"({"threads": 2})", err, sizeof err);
  ASSERT_NE(m.model, nullptr) << err;
  const std::string file = fashion_image("00000_9_ankle_boot.png");
  std::vector<float> from_file(10), from_bytes(10), from_images(20), from_pixels(10);
  ASSERT_EQ(perceiver_classify_file(m.model, file.c_str(), from_file.data(), err, sizeof err), 0) << err;
  std::ifstream in(file, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(
      perceiver_classify_encoded(m.model, bytes.data(), bytes.size(), from_bytes.data(), err, sizeof err), 0);
  EXPECT_EQ(from_file, from_bytes);

  perceiver_image* image = nullptr;
  ASSERT_EQ(perceiver_image_load_file(file.c_str(), &image, err, sizeof err), 0) << err;
  EXPECT_EQ(perceiver_image_width(image), 28);
  EXPECT_EQ(perceiver_image_height(image), 28);
  // The decoded RGB of a gray PNG as gray pixels with a padded stride.
  std::vector<uint8_t> gray(28 * 32, 0xee);
  for (int y = 0; y < 28; ++y)
    for (int x = 0; x < 28; ++x) gray[y * 32 + x] = perceiver_image_rgb(image)[(y * 28 + x) * 3];
  perceiver_image* from_gray = nullptr;
  ASSERT_EQ(perceiver_image_from_pixels(gray.data(), 28, 28, 1, 32, &from_gray, err, sizeof err), 0) << err;
  const perceiver_image* both[] = {image, from_gray};
  ASSERT_EQ(perceiver_classify_images(m.model, both, 2, 0, from_images.data(), err, sizeof err), 0) << err;
  EXPECT_TRUE(std::equal(from_file.begin(), from_file.end(), from_images.begin()));
  EXPECT_TRUE(std::equal(from_file.begin(), from_file.end(), from_images.begin() + 10));

  // The same logits as the C++ API.
  auto cpp = perceiver::Model::load(fashion_dir());
  const perceiver::Tensor expected = cpp->create_context()->logits({perceiver::decode_image_file(file)});
  EXPECT_EQ(from_file, expected.data);

  int ids[3];
  float probabilities[3];
  ASSERT_EQ(perceiver_top_k(m.model, from_file.data(), 3, ids, probabilities, err, sizeof err), 0);
  EXPECT_EQ(ids[0], 9);  // HF's top-1 for this image (expected/images_logits.npy)
  EXPECT_GT(probabilities[0], probabilities[1]);
  EXPECT_EQ(perceiver_top_k(m.model, from_file.data(), 0, ids, probabilities, err, sizeof err),
            PERCEIVER_ERR_USAGE);

  // Preprocess: the C++ API's pixels; a short buffer is a usage error naming the size needed.
  int h = 0, w = 0;
  EXPECT_EQ(perceiver_preprocess(m.model, image, nullptr, 0, &h, &w, err, sizeof err), 0);
  ASSERT_EQ(h * w, 56 * 56);
  std::vector<float> pixels(3 * 56 * 56);
  EXPECT_EQ(perceiver_preprocess(m.model, image, pixels.data(), 10, &h, &w, err, sizeof err),
            PERCEIVER_ERR_USAGE);
  EXPECT_NE(std::string(err).find("9408"), std::string::npos) << err;
  ASSERT_EQ(perceiver_preprocess(m.model, image, pixels.data(), pixels.size(), &h, &w, err, sizeof err), 0);
  EXPECT_EQ(pixels, cpp->preprocess(perceiver::decode_image_file(file)).data);

  // Embeddings: the C++ API's, on the model and on a context.
  std::vector<float> mean(2 * 128), latents(2 * 64 * 128);
  ASSERT_EQ(perceiver_embed(m.model, both, 2, PERCEIVER_POOL_MEAN, mean.data(), err, sizeof err), 0) << err;
  perceiver_context* context = perceiver_context_new(m.model, err, sizeof err);
  ASSERT_EQ(perceiver_embed_ctx(context, both, 2, PERCEIVER_POOL_LATENTS, latents.data(), err, sizeof err),
            0);
  const auto decoded = perceiver::decode_image_file(file);
  EXPECT_EQ(mean, cpp->create_context()->embed({decoded, decoded}, perceiver::Pool::mean).data);
  EXPECT_EQ(latents, cpp->create_context()->embed({decoded, decoded}, perceiver::Pool::latents).data);
  EXPECT_EQ(perceiver_embed_ctx(context, both, 2, perceiver_pool(7), mean.data(), err, sizeof err),
            PERCEIVER_ERR_USAGE);
  perceiver_context_free(context);
  perceiver_image_free(image);
  perceiver_image_free(from_gray);
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

// Failures: the CLI's exit codes, one line naming the file or argument; truncation; NULL handles.
TEST(CApi, ErrorsNameTheFileAndCarryTheExitCode) {
  char err[256];
  perceiver_model* model = nullptr;
  const std::string missing = (perceiver::test::temp_dir("capi") / "no-model").string();
  EXPECT_EQ(perceiver_model_load_ex(missing.c_str(), nullptr, &model, err, sizeof err), PERCEIVER_ERR_MODEL);
  EXPECT_EQ(model, nullptr);
  EXPECT_NE(std::string(err).find(missing), std::string::npos) << err;

  EXPECT_EQ(
      perceiver_model_load_ex(fashion_dir().c_str(), R"({"precision": "fp64"})", &model, err, sizeof err),
      PERCEIVER_ERR_USAGE);
  EXPECT_NE(std::string(err).find("fp64"), std::string::npos) << err;
  EXPECT_EQ(perceiver_model_load_ex(fashion_dir().c_str(), R"({"thread": 2})", &model, err, sizeof err),
            PERCEIVER_ERR_USAGE);
  EXPECT_NE(std::string(err).find("\"thread\""), std::string::npos) << err;
  EXPECT_EQ(perceiver_model_load_ex(fashion_dir().c_str(), R"({"threads": "2"})", &model, err, sizeof err),
            PERCEIVER_ERR_USAGE);
  EXPECT_EQ(perceiver_model_load_ex(fashion_dir().c_str(), "{threads", &model, err, sizeof err),
            PERCEIVER_ERR_USAGE);

  ModelHandle m;
  ASSERT_EQ(perceiver_model_load_ex(fashion_dir().c_str(), R"({"threads": 2, "max_image_pixels": 100})",
                                    &m.model, err, sizeof err),
            0)
      << err;
  std::vector<float> logits(10);
  const std::string not_image = (perceiver::test::source_dir() / "CMakeLists.txt").string();
  EXPECT_EQ(perceiver_classify_file(m.model, not_image.c_str(), logits.data(), err, sizeof err),
            PERCEIVER_ERR_BAD_INPUT);
  EXPECT_EQ(std::string(err).rfind(not_image + ": ", 0), 0u) << err;
  EXPECT_EQ(std::string(err).find('\n'), std::string::npos);
  // 28 x 28 = 784 pixels: over the limit of 100 given in the options (Pillow's rule: above 2x).
  EXPECT_EQ(perceiver_classify_file(m.model, fashion_image("00000_9_ankle_boot.png").c_str(), logits.data(),
                                    err, sizeof err),
            PERCEIVER_ERR_BAD_INPUT);
  EXPECT_NE(std::string(err).find("00000_9_ankle_boot.png"), std::string::npos) << err;
  EXPECT_EQ(perceiver_classify_encoded(m.model, "GIF89a", 6, logits.data(), err, sizeof err),
            PERCEIVER_ERR_BAD_INPUT);
  EXPECT_NE(std::string(err).find("<image bytes>"), std::string::npos) << err;
  // An empty batch: usage.
  std::vector<float> pixels(3 * 8 * 8);
  EXPECT_EQ(perceiver_forward(m.model, pixels.data(), 0, 8, 8, logits.data(), err, sizeof err),
            PERCEIVER_ERR_USAGE);
  EXPECT_NE(std::string(err).find("batch"), std::string::npos) << err;

  // Truncation to the buffer, NUL-terminated; a NULL buffer is allowed.
  char tiny[8];
  EXPECT_EQ(perceiver_classify_file(m.model, not_image.c_str(), logits.data(), tiny, sizeof tiny), 3);
  EXPECT_EQ(std::string(tiny), not_image.substr(0, 7));
  EXPECT_EQ(perceiver_classify_file(m.model, not_image.c_str(), logits.data(), nullptr, 0), 3);

  // NULL handles and arrays: usage errors, no crash.
  EXPECT_EQ(perceiver_classify_file(nullptr, not_image.c_str(), logits.data(), err, sizeof err),
            PERCEIVER_ERR_USAGE);
  EXPECT_EQ(perceiver_classify_file(m.model, nullptr, logits.data(), err, sizeof err), PERCEIVER_ERR_USAGE);
  EXPECT_EQ(perceiver_classify_file_ctx(nullptr, not_image.c_str(), logits.data(), err, sizeof err),
            PERCEIVER_ERR_USAGE);
  const perceiver_image* none[] = {nullptr};
  EXPECT_EQ(perceiver_classify_images(m.model, none, 1, 1, logits.data(), err, sizeof err),
            PERCEIVER_ERR_USAGE);
  EXPECT_NE(std::string(err).find("images[0]"), std::string::npos) << err;
  EXPECT_EQ(perceiver_model_num_labels(nullptr), 0);
  EXPECT_EQ(perceiver_context_new(nullptr, err, sizeof err), nullptr);
  perceiver_image* image = nullptr;
  EXPECT_EQ(perceiver_image_from_pixels(reinterpret_cast<const uint8_t*>(pixels.data()), 4, 4, 2, 0, &image,
                                        err, sizeof err),
            PERCEIVER_ERR_BAD_INPUT);
  EXPECT_EQ(image, nullptr);
  perceiver_model_free(nullptr);
  perceiver_context_free(nullptr);
  perceiver_image_free(nullptr);
}

}  // namespace
