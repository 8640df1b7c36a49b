// Golden tests: every intermediate and the logits of the three architectures against Hugging Face PyTorch,
// from both weight formats, on both backends. Tolerance: max|got - want| <= 1e-4 * max(1, max|want|).
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "formats/npy.h"
#ifdef PERCEIVER_HAVE_ONEDNN
#include "kernels/fast_kernels.h"
#endif
#include "model/position_encoding.h"
#include "perceiver/perceiver.h"
#include "test_util.h"

namespace perceiver {
namespace {

// The fast backend runs fp32 linears on its own GEMM, which packs the weights, on AVX-512 CPUs.
bool fast_backend_packs_fp32() {
#ifdef PERCEIVER_HAVE_ONEDNN
  return fast::use_avx512();
#else
  return false;
#endif
}

constexpr double kParityTolerance = 1e-4;

struct GoldenCase {
  std::string variant;  // conv-tiny, fourier-tiny, learned-tiny
  std::string weights;  // model.safetensors or pytorch_model.bin
  std::string backend;  // reference or auto
  bool mmap = true;     // ModelOptions::mmap_weights
};

void PrintTo(const GoldenCase& c, std::ostream* os) {
  *os << c.variant << " " << c.weights << " " << c.backend << (c.mmap ? "" : " no-mmap");
}

std::string case_name(const ::testing::TestParamInfo<GoldenCase>& info) {
  std::string s = info.param.variant + "_" + info.param.weights + "_" + info.param.backend +
                  (info.param.mmap ? "" : "_nommap");
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

class GoldenTest : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenTest, EveryIntermediateAndLogitsMatchHuggingFace) {
  const auto& p = GetParam();
  const auto dir = test::vectors_dir() / p.variant;
  nlohmann::json manifest = nlohmann::json::parse(std::ifstream(dir / "manifest.json"));

  ModelOptions options;
  options.weights_file = dir / p.weights;
  options.backend = p.backend;
  options.mmap_weights = p.mmap;
  auto model = Model::load(dir, options);
  // The fast backend reads fp32 weights in place from the mapped file (model.safetensors, or the stored
  // entries of pytorch_model.bin) when it runs them on oneDNN (no AVX-512); with AVX-512 its own GEMM packs
  // them; nothing else reads in place.
  EXPECT_EQ(model->info().weights_in_place,
            p.mmap && model->info().backend == "fast" && !fast_backend_packs_fp32());

  NpyArray pixels = read_npy(dir / "pixel_values.npy");
  ASSERT_EQ(pixels.shape.size(), 4u);
  const int B = static_cast<int>(pixels.shape[0]), H = static_cast<int>(pixels.shape[2]),
            W = static_cast<int>(pixels.shape[3]);
  std::vector<float> input = pixels.to_f32();

  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> traced;
  TraceFn trace = [&](std::string_view name, const std::vector<int64_t>& shape, const float* data) {
    size_t n = 1;
    for (auto d : shape) n *= d;
    traced[std::string(name)] = {shape, std::vector<float>(data, data + n)};
  };
  std::vector<float> logits(size_t(B) * model->info().num_labels);
  ForwardArgs args;
  args.pixels = input.data();
  args.batch = B;
  args.height = H;
  args.width = W;
  args.logits = logits.data();
  args.trace = &trace;
  args.trace_attention_probs = true;
  model->forward(args);

  int compared = 0;
  for (const auto& f : manifest["files"]) {
    std::string file = f["file"];
    if (!file.ends_with(".npy") || file == "pixel_values.npy") continue;
    std::string name = file.substr(0, file.size() - 4);
    SCOPED_TRACE(name);
    NpyArray want = read_npy(dir / file);
    auto it = traced.find(name);
    ASSERT_NE(it, traced.end()) << "the model never produced " << name;
    EXPECT_EQ(it->second.first, want.shape);
    EXPECT_TRUE(test::AllCloseScaled(it->second.second, want.to_f32(), kParityTolerance));
    ++compared;
  }
  EXPECT_GE(compared, 14) << "manifest lists fewer tensors than expected";

  // classify() (no tracing) gives the logits of the traced forward. It runs the batch a few images per pass
  // (ModelOptions::images_per_pass) where the traced forward takes the whole batch at once, and a GEMM may
  // block a different row count differently: equal up to float rounding.
  std::vector<float> logits2(logits.size());
  model->classify(input.data(), B, H, W, logits2.data());
  EXPECT_TRUE(test::AllCloseScaled(logits2, logits, 1e-5));
}

std::vector<GoldenCase> all_cases() {
  std::vector<GoldenCase> cases;
  for (std::string v : {"conv-tiny", "fourier-tiny", "learned-tiny"})
    for (std::string w : {"model.safetensors", "pytorch_model.bin"})
      for (std::string b : {"reference", "auto"}) cases.push_back({v, w, b});
  for (std::string v : {"conv-tiny", "fourier-tiny", "learned-tiny"})
    cases.push_back({v, "model.safetensors", "auto", false});  // weights copied and packed
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Vectors, GoldenTest, ::testing::ValuesIn(all_cases()), case_name);

// Batch elements never mix: each image alone gives its row of the batched logits, however many images go
// through the network per pass (ModelOptions::images_per_pass; 2 leaves a partial last pass of the 5 images).
TEST(Model, BatchRowsAreIndependent) {
  const auto dir = test::vectors_dir() / "conv-tiny";
  NpyArray pixels = read_npy(dir / "pixel_values.npy");
  const int H = static_cast<int>(pixels.shape[2]), W = static_cast<int>(pixels.shape[3]);
  const size_t image = size_t(3) * H * W;
  std::vector<float> input = pixels.to_f32();
  while (input.size() < 5 * image) input.insert(input.end(), input.begin(), input.begin() + image);
  input.resize(5 * image);
  for (size_t i = 0; i < input.size(); ++i) input[i] *= 1.0f - 0.1f * float(i / image);  // 5 different images
  const int B = 5;
  for (int per_pass : {1, 2, 64}) {
    SCOPED_TRACE(::testing::Message() << per_pass << " images per pass");
    ModelOptions options;
    options.images_per_pass = per_pass;
    auto model = Model::load(dir, options);
    const int n = model->info().num_labels;
    std::vector<float> batched(size_t(B) * n), single(n);
    model->classify(input.data(), B, H, W, batched.data());
    for (int b = 0; b < B; ++b) {
      model->classify(&input[b * image], 1, H, W, single.data());
      std::vector<float> row(batched.begin() + size_t(b) * n, batched.begin() + size_t(b + 1) * n);
      EXPECT_TRUE(test::AllCloseScaled(single, row, 1e-5));
    }
  }
}

TEST(Model, RefusesInputSizesTheModelCannotTake) {
  auto learned = Model::load(test::vectors_dir() / "learned-tiny");
  EXPECT_THROW(learned->check_input_size(9, 8), Error);
  EXPECT_NO_THROW(learned->check_input_size(8, 8));
  auto conv = Model::load(test::vectors_dir() / "conv-tiny");
  EXPECT_THROW(conv->check_input_size(4, 32), Error);
  EXPECT_THROW(conv->check_input_size(0, 32), Error);
}

// linspace_f32 reproduces torch.linspace bit for bit (values written by tests/data/make_torch_linspace.py).
TEST(PositionEncoding, LinspaceMatchesTorchBitForBit) {
  int files = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(test::source_dir() / "tests/data/torch_linspace")) {
    const std::string name = entry.path().stem().string();  // linspace_<start>_<end>_<steps>
    float start, end;
    int steps;
    ASSERT_EQ(std::sscanf(name.c_str(), "linspace_%f_%f_%d", &start, &end, &steps), 3) << name;
    std::vector<float> want = read_npy(entry.path()).to_f32();
    std::vector<float> got = linspace_f32(start, end, steps);
    ASSERT_EQ(got.size(), want.size()) << name;
    for (int i = 0; i < steps; ++i) EXPECT_EQ(got[i], want[i]) << name << " [" << i << "]";
    ++files;
  }
  EXPECT_GE(files, 8);
}

// The Fourier features equal HF's (the position channels of preproc_output) to 1 ulp of sin/cos.
TEST(PositionEncoding, FourierFeaturesMatchHuggingFace) {
  struct Case {
    const char* variant;
    int h, w, max_resolution, offset;
  };
  for (const Case& c : {Case{"fourier-tiny", 16, 12, 224, 3}, Case{"conv-tiny", 7, 7, 56, 64}}) {
    NpyArray want = read_npy(test::vectors_dir() / c.variant / "preproc_output.npy");
    ASSERT_EQ(want.shape[1], c.h * c.w);
    const int channels = static_cast<int>(want.shape[2]);
    std::vector<float> all = want.to_f32(), expected;
    for (int t = 0; t < c.h * c.w; ++t)
      expected.insert(expected.end(), all.begin() + t * channels + c.offset,
                      all.begin() + (t + 1) * channels);
    std::vector<float> got = fourier_position_encoding(c.h, c.w, c.max_resolution, c.max_resolution, 64);
    EXPECT_TRUE(test::AllCloseScaled(got, expected, 1.2e-7)) << c.variant;
  }
}

TEST(Model, ReportsParameterCountFromManifest) {
  for (std::string v : {"conv-tiny", "fourier-tiny", "learned-tiny"}) {
    const auto dir = test::vectors_dir() / v;
    nlohmann::json manifest = nlohmann::json::parse(std::ifstream(dir / "manifest.json"));
    auto model = Model::load(dir);
    EXPECT_EQ(model->info().num_parameters, manifest["num_parameters"].get<int64_t>()) << v;
  }
}

}  // namespace
}  // namespace perceiver
