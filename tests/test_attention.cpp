// Attention maps (include/perceiver/attention.h, `perceiver attention`): every probability tensor against
// HF's output_attentions in the tiny golden vectors (max abs error 1e-5), rows summing to 1, the traced mode
// giving the normal forward's logits bit for bit, the relevance formulas, the overlay's size and PNG, and bad
// input.
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "formats/npy.h"
#include "perceiver/attention.h"
#include "perceiver/image.h"
#include "perceiver/perceiver.h"
#include "test_util.h"

namespace perceiver {
namespace {

constexpr double kProbTolerance = 1e-5;  // max |ours - HF| of a probability
constexpr double kRowSumTolerance = 1e-5;

struct ProbsCase {
  std::string variant;  // conv-tiny, fourier-tiny, learned-tiny
  std::string backend;  // reference or auto
};

std::string probs_case_name(const ::testing::TestParamInfo<ProbsCase>& info) {
  std::string s = info.param.variant + "_" + info.param.backend;
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

struct Golden {
  std::vector<float> pixels;
  int B = 0, H = 0, W = 0;
};

Golden golden_pixels(const std::filesystem::path& dir) {
  NpyArray a = read_npy(dir / "pixel_values.npy");
  return {a.to_f32(), int(a.shape[0]), int(a.shape[2]), int(a.shape[3])};
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

class AttentionGolden : public ::testing::TestWithParam<ProbsCase> {};

TEST_P(AttentionGolden, EveryProbabilityTensorMatchesHuggingFace) {
  const auto dir = test::vectors_dir() / GetParam().variant;
  ModelOptions options;
  options.backend = GetParam().backend;
  auto model = Model::load(dir, options);
  auto ctx = model->create_context();
  const Golden g = golden_pixels(dir);
  const AttentionMaps maps = attention_maps(*ctx, g.pixels.data(), g.B, g.H, g.W);

  const nlohmann::json manifest = nlohmann::json::parse(std::ifstream(dir / "manifest.json"));
  std::set<std::string> expected;
  for (const auto& f : manifest["files"]) {
    const std::string file = f["file"];
    if (!file.ends_with("_probs.npy") && file.find("_probs_b") == std::string::npos) continue;
    const std::string name = file.substr(0, file.size() - 4);
    SCOPED_TRACE(name);
    expected.insert(name);
    const NpyArray want = read_npy(dir / file);
    const Tensor& got = maps.get(name);
    ASSERT_EQ(got.shape, want.shape);
    EXPECT_EQ(got.shape, f["shape"].get<std::vector<int64_t>>());
    const double err = max_abs_diff(got.data, want.to_f32());
    EXPECT_LE(err, kProbTolerance);
  }
  // The golden configs: 2 blocks x 2 self-attention layers, plus the two cross-attentions.
  EXPECT_EQ(expected.size(), 6u);
  EXPECT_EQ(maps.tensors.size(), expected.size());
  EXPECT_EQ(maps.self_attention().size(), 4u);
  EXPECT_EQ(maps.cross_attention().shape[3], maps.grid.tokens());

  // Each row of each tensor is a distribution.
  for (const auto& t : maps.tensors) {
    SCOPED_TRACE(t.name);
    const size_t cols = size_t(t.tensor.shape.back());
    double worst = 0;
    for (size_t r = 0; r < t.tensor.data.size() / cols; ++r) {
      double sum = 0;
      for (size_t c = 0; c < cols; ++c) sum += t.tensor.data[r * cols + c];
      worst = std::max(worst, std::fabs(sum - 1.0));
    }
    EXPECT_LE(worst, kRowSumTolerance);
  }
  // Relevance maps are distributions over the tokens.
  for (bool rollout : {false, true}) {
    const Tensor r = relevance_map(maps, {.rollout = rollout});
    ASSERT_EQ(r.shape, (std::vector<int64_t>{g.B, maps.grid.height, maps.grid.width}));
    for (int b = 0; b < g.B; ++b) {
      double sum = 0;
      for (int t = 0; t < maps.grid.tokens(); ++t) sum += r.data[size_t(b) * maps.grid.tokens() + t];
      EXPECT_NEAR(sum, 1.0, 1e-5) << "rollout " << rollout;
    }
  }
}

// The logits of the golden pixels through the normal forward and through the traced one (attention_maps):
// the same bits. Returns the normal ones.
std::vector<float> expect_traced_logits_equal(const Model& model, Context& ctx, const Golden& g) {
  std::vector<float> plain(size_t(g.B) * model.info().num_labels);
  ctx.logits(g.pixels.data(), g.B, g.H, g.W, plain.data());
  const AttentionMaps maps = attention_maps(ctx, g.pixels.data(), g.B, g.H, g.W);
  EXPECT_EQ(maps.logits.data.size(), plain.size());
  if (maps.logits.data.size() == plain.size()) {
    EXPECT_EQ(std::memcmp(maps.logits.data.data(), plain.data(), sizeof(float) * plain.size()), 0);
  }
  return plain;
}

// The traced mode runs the same kernels as the normal forward: the logits are bit for bit the same.
// (images_per_pass keeps the untraced batch in one pass, as the traced one is.)
TEST_P(AttentionGolden, MaterialisedProbabilitiesLeaveTheLogitsBitForBit) {
  const auto dir = test::vectors_dir() / GetParam().variant;
  ModelOptions options;
  options.backend = GetParam().backend;
  options.images_per_pass = 64;
  auto model = Model::load(dir, options);
  auto ctx = model->create_context();
  const Golden g = golden_pixels(dir);
  const std::vector<float> plain = expect_traced_logits_equal(*model, *ctx, g);
  std::vector<float> again(plain.size());
  ctx->logits(g.pixels.data(), g.B, g.H, g.W, again.data());  // and the context is left as it was
  EXPECT_EQ(std::memcmp(again.data(), plain.data(), sizeof(float) * plain.size()), 0);
}

// bf16 (and int8, which attends in bf16) without probabilities to return writes the exponentials straight
// into the bf16 tile; with them, the fp32 probabilities are converted afterwards: the same bits.
TEST(AttentionBf16, MaterialisedProbabilitiesLeaveTheLogitsBitForBit) {
  for (Precision precision : {Precision::bf16, Precision::int8}) {
    SCOPED_TRACE(precision == Precision::bf16 ? "bf16" : "int8");
    const auto dir = test::vectors_dir() / "conv-tiny";
    ModelOptions options;
    options.precision = precision;
    options.images_per_pass = 64;
    std::unique_ptr<Model> model;
    try {
      model = Model::load(dir, options);
    } catch (const Error& e) {  // a CPU without AVX-512 / VNNI: the fast backend refuses these precisions
      PERCEIVER_SKIP_FOR_CPU(e.what());
    }
    expect_traced_logits_equal(*model, *model->create_context(), golden_pixels(dir));
  }
}

std::vector<ProbsCase> probs_cases() {
  std::vector<ProbsCase> cases;
  for (std::string v : {"conv-tiny", "fourier-tiny", "learned-tiny"})
    for (std::string b : {"reference", "auto"}) cases.push_back({v, b});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Vectors, AttentionGolden, ::testing::ValuesIn(probs_cases()), probs_case_name);

TEST(Attention, TokenGridOfTheConvStem) {
  auto model = Model::load(test::vectors_dir() / "conv-tiny");
  auto ctx = model->create_context();
  std::vector<float> pixels(size_t(3) * 224 * 224, 0.1f);
  const AttentionMaps maps = attention_maps(*ctx, pixels.data(), 1, 224, 224);
  EXPECT_EQ(maps.grid.height, 55);
  EXPECT_EQ(maps.grid.width, 55);
  EXPECT_EQ(maps.grid.stride, 4);
  EXPECT_EQ(maps.grid.offset, 2.0);
  EXPECT_EQ(maps.grid.receptive_field, 11);
  EXPECT_EQ(maps.cross_attention().shape[3], 3025);
}

// Hand-made maps: 2 heads, 2 latents, 1x2 tokens, one self-attention layer.
AttentionMaps tiny_maps() {
  AttentionMaps m;
  m.batch = 1;
  m.height = 1;
  m.width = 2;
  m.num_latents = 2;
  m.grid = {1, 2, 1, 0.0, 1};
  // head means: X = [[0.9, 0.1], [0.2, 0.8]], S = [[0.5, 0.5], [0, 1]], d = [0.75, 0.25]
  m.tensors.push_back({"cross_attn_probs", {{1, 2, 2, 2}, {1.0f, 0.0f, 0.4f, 0.6f, 0.8f, 0.2f, 0.0f, 1.0f}}});
  m.tensors.push_back(
      {"self_attn_probs_b0_l0", {{1, 2, 2, 2}, {0.5f, 0.5f, 0.0f, 1.0f, 0.5f, 0.5f, 0.0f, 1.0f}}});
  m.tensors.push_back({"decoder_cross_attn_probs", {{1, 2, 1, 2}, {1.0f, 0.0f, 0.5f, 0.5f}}});
  return m;
}

TEST(Attention, RelevanceFormulas) {
  const AttentionMaps m = tiny_maps();
  // direct: d X = [0.75 * 0.9 + 0.25 * 0.2, 0.75 * 0.1 + 0.25 * 0.8] = [0.725, 0.275]
  const Tensor direct = relevance_map(m);
  ASSERT_EQ(direct.shape, (std::vector<int64_t>{1, 1, 2}));
  EXPECT_NEAR(direct.data[0], 0.725, 1e-6);
  EXPECT_NEAR(direct.data[1], 0.275, 1e-6);
  // rollout: A = (S + I) / 2 = [[0.75, 0.25], [0, 1]]; d A = [0.5625, 0.4375];
  // d A X = [0.5625 * 0.9 + 0.4375 * 0.2, 0.5625 * 0.1 + 0.4375 * 0.8] = [0.59375, 0.40625]
  const Tensor rollout = relevance_map(m, {.rollout = true});
  EXPECT_NEAR(rollout.data[0], 0.59375, 1e-6);
  EXPECT_NEAR(rollout.data[1], 0.40625, 1e-6);
  // latent 1's cross-attention, heads averaged
  const Tensor l = latent_maps(m, {1});
  ASSERT_EQ(l.shape, (std::vector<int64_t>{1, 1, 1, 2}));
  EXPECT_NEAR(l.data[0], 0.2, 1e-6);
  EXPECT_NEAR(l.data[1], 0.8, 1e-6);
  EXPECT_THROW(latent_maps(m, {2}), Error);
  EXPECT_THROW(m.get("nothing"), Error);
}

TEST(Attention, ParseLatentList) {
  EXPECT_EQ(parse_latent_list("3,1", 64), (std::vector<int>{3, 1}));
  EXPECT_EQ(parse_latent_list("all", 3), (std::vector<int>{0, 1, 2}));
  for (const char* bad : {"", "3,x", "1,,2", "-1", "64", "1,1", "all,2", " 1"}) {
    SCOPED_TRACE(bad);
    try {
      parse_latent_list(bad, 64);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::usage);
      EXPECT_NE(std::string(e.what()).find("--latents"), std::string::npos) << e.what();
    }
  }
}

Image solid_image(int width, int height, uint8_t value) {
  Image image;
  image.width = width;
  image.height = height;
  image.rgb.assign(size_t(width) * height * 3, value);
  return image;
}

// A 2x2 token grid over a black 2x2 image: the hottest token's corner has the colour map's top colour times
// the opacity, the coldest its bottom colour; outside the region the model saw the image is dimmed.
TEST(Attention, OverlayColoursFollowTheMap) {
  AttentionMaps m;
  m.batch = 1;
  m.height = m.width = 2;
  m.grid = {2, 2, 1, 0.0, 1};
  m.has_source_region = true;
  m.source_region = {0, 0, 2, 2};
  m.source_height = m.source_width = 2;
  const float token_map[4] = {0.0f, 0.1f, 0.1f, 0.5f};
  OverlayOptions options;
  options.opacity = 0.5;
  const Image out = render_overlay(solid_image(2, 2, 0), m, token_map, options);
  ASSERT_EQ(out.width, 224);  // enlarged by 112 to reach 224 on the short side
  ASSERT_EQ(out.height, 224);
  uint8_t top[3], bottom[3];
  colour_map_rgb(ColourMap::viridis, 1.0, top);
  colour_map_rgb(ColourMap::viridis, 0.0, bottom);
  EXPECT_EQ(top[0], 0xfd);  // viridis ends in yellow #fde725 and starts in purple #440154
  EXPECT_EQ(bottom[2], 0x54);
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(out.rgb[(size_t(223) * 224 + 223) * 3 + c], 0.5 * top[c], 1.0);
    EXPECT_NEAR(out.rgb[c], 0.5 * bottom[c], 1.0);
  }
  // The model saw only the left half of a grey 4x2 image.
  m.source_width = 4;
  const Image grey = solid_image(4, 2, 200);
  const Image half = render_overlay(grey, m, token_map, options);
  ASSERT_EQ(half.width, 448);
  ASSERT_EQ(half.height, 224);
  EXPECT_NEAR(half.rgb[(size_t(100) * 448 + 440) * 3], 200 * options.outside_dim, 1.0);
  // An image of another size than the maps' source is refused.
  EXPECT_THROW(render_overlay(solid_image(3, 3, 0), m, token_map), Error);
}

std::filesystem::path fashion_model() { return test::shared_dir() / "models" / "fashion-mnist-conv"; }

// Overlays keep the image's aspect ratio: small images are enlarged by a whole factor to at least 224 px on
// the short side, others keep their size; the PNG decodes back to the same pixels.
TEST(Attention, OverlaySizeAspectAndPng) {
  auto model = Model::load(fashion_model());
  auto ctx = model->create_context();
  struct Size {
    int w, h, want_w, want_h;
  };
  for (Size s : {Size{28, 28, 224, 224}, Size{100, 60, 400, 240}, Size{451, 300, 451, 300}}) {
    SCOPED_TRACE(::testing::Message() << s.w << "x" << s.h);
    Image image = solid_image(s.w, s.h, 0);
    for (size_t i = 0; i < image.rgb.size(); ++i) image.rgb[i] = uint8_t((i * 37) % 251);
    const AttentionMaps maps = attention_maps(*ctx, image);
    ASSERT_TRUE(maps.has_source_region);
    const Image overlay = render_overlay(image, maps, relevance_map(maps));
    EXPECT_EQ(overlay.width, s.want_w);
    EXPECT_EQ(overlay.height, s.want_h);
    const std::string png = encode_png(overlay);
    ASSERT_GT(png.size(), 8u);
    EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
    const Image back = decode_image(png.data(), png.size(), "overlay.png");
    EXPECT_EQ(back.width, overlay.width);
    EXPECT_EQ(back.height, overlay.height);
    EXPECT_TRUE(back.rgb == overlay.rgb);
  }
  const Image image = solid_image(40, 30, 128);
  const AttentionMaps maps = attention_maps(*ctx, image);
  const Image grid = render_latent_grid(image, maps, {3, 17, 20});  // 2 columns x 2 rows of 224 px tiles
  EXPECT_EQ(grid.width, 2 * 299 + 4);
  EXPECT_EQ(grid.height, 2 * 224 + 4);
}

TEST(Attention, PreprocessedRegionIsTheCentreCrop) {
  ModelOptions options;
  options.preprocess_defaults = true;  // crop 224/256 of the short side, then 224x224
  auto model = Model::load(test::vectors_dir() / "conv-tiny", options);
  const ImageRegion r = preprocessed_region(*model, solid_image(300, 200, 0));
  EXPECT_EQ(r.height, 175);  // int(224 / 256 * 200)
  EXPECT_EQ(r.width, 175);
  EXPECT_EQ(r.top, 12);  // (200 - 175) // 2
  EXPECT_EQ(r.left, 62);
}

// --- the CLI -----------------------------------------------------------------------------------------------

std::string cli() { return test::cli_path().string(); }
std::string quote(const std::filesystem::path& p) { return test::shell_quote(p); }

int count_entries(const std::filesystem::path& dir) {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}

TEST(AttentionCli, WritesTheGoldenNamesShapesAndManifest) {
  const auto vectors = test::vectors_dir() / "learned-tiny";
  const auto out = test::temp_dir("attention-cli") / "maps";
  std::string output;
  ASSERT_EQ(test::run_command(cli() + " attention -q --model " + quote(vectors) + " --pixels " +
                                  quote(vectors / "pixel_values.npy") + " --out " + quote(out),
                              &output),
            0)
      << output;
  const nlohmann::json manifest = nlohmann::json::parse(std::ifstream(out / "manifest.json"));
  EXPECT_EQ(manifest["generator"], "perceiver attention");
  EXPECT_EQ(manifest["input_grid"]["tokens"].get<int>(),
            manifest["input_grid"]["height"].get<int>() * manifest["input_grid"]["width"].get<int>());
  std::set<std::string> listed;
  for (const auto& f : manifest["files"]) {
    const std::string file = f["file"];
    listed.insert(file);
    EXPECT_EQ(read_npy(out / file).shape, f["shape"].get<std::vector<int64_t>>()) << file;
  }
  EXPECT_EQ(int(listed.size()) + 1, count_entries(out));  // every file listed, the manifest besides
  const nlohmann::json golden = nlohmann::json::parse(std::ifstream(vectors / "manifest.json"));
  int compared = 0;
  for (const auto& f : golden["files"]) {
    const std::string file = f["file"];
    if (file.find("_probs") == std::string::npos) continue;
    ASSERT_TRUE(listed.count(file)) << file;
    const NpyArray got = read_npy(out / file), want = read_npy(vectors / file);
    EXPECT_EQ(got.shape, want.shape) << file;
    EXPECT_LE(max_abs_diff(got.to_f32(), want.to_f32()), kProbTolerance) << file;
    ++compared;
  }
  EXPECT_EQ(compared, 6);
  // Running again replaces its own earlier output.
  ASSERT_EQ(test::run_command(cli() + " attention -q --model " + quote(vectors) + " --pixels " +
                                  quote(vectors / "pixel_values.npy") + " --out " + quote(out),
                              &output),
            0)
      << output;
}

TEST(AttentionCli, OverlayPngOfAnImage) {
  const auto dir = test::temp_dir("attention-overlay");
  Image image = solid_image(28, 28, 0);
  for (int y = 8; y < 20; ++y)
    for (int x = 6; x < 22; ++x) std::memset(&image.rgb[(size_t(y) * 28 + x) * 3], 220, 3);
  write_png_file(dir / "item.png", image);
  for (const char* extra : {"", " --rollout", " --latents 0,5,9 --colormap magma"}) {
    SCOPED_TRACE(extra);
    std::string output;
    ASSERT_EQ(test::run_command(cli() + " attention -q --model " + quote(fashion_model()) + " " +
                                    quote(dir / "item.png") + " --overlay-out " + quote(dir / "overlay.png") +
                                    extra,
                                &output),
              0)
        << output;
    const Image overlay = decode_image_file(dir / "overlay.png");
    EXPECT_GE(overlay.width, 224);
    EXPECT_EQ(overlay.width * 28, overlay.height * 28);  // the image's aspect (square)
  }
}

TEST(AttentionCli, BadInputGivesOneLineAndNoOutput) {
  const auto dir = test::temp_dir("attention-bad");
  const auto model = fashion_model();
  write_png_file(dir / "ok.png", solid_image(28, 28, 90));
  struct Case {
    std::string args;
    int exit_code;
    std::string says;
  };
  const std::vector<Case> cases = {
      {quote(dir / "missing.jpg") + " --out " + quote(dir / "out"), 3, "missing.jpg"},
      {quote(dir / "ok.png") + " --out " + quote(dir / "out") + " --overlay-out " + quote(dir / "o.png") +
           " --latents 3,x",
       2, "--latents"},
      {quote(dir / "ok.png") + " --out " + quote(dir / "out") + " --overlay-out " + quote(dir / "o.png") +
           " --latents 64",
       2, "out of range"},
      {"--pixels " + quote(dir / "ok.png") + " --out " + quote(dir / "out"), 3, "ok.png"},
      {quote(dir / "ok.png"), 2, "--out"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    std::string output;
    EXPECT_EQ(
        test::run_command(cli() + " attention -q --model " + quote(model) + " " + c.args + " 2>&1", &output),
        c.exit_code)
        << output;
    EXPECT_NE(output.find(c.says), std::string::npos) << output;
    EXPECT_EQ(std::count(output.begin(), output.end(), '\n'), 1) << output;
    EXPECT_FALSE(std::filesystem::exists(dir / "out"));
    EXPECT_FALSE(std::filesystem::exists(dir / "o.png"));
    EXPECT_EQ(count_entries(dir), 1);  // ok.png only: no temporaries left
  }
  // A folder that is not an earlier output is not replaced.
  std::filesystem::create_directory(dir / "mine");
  std::ofstream(dir / "mine" / "notes.txt") << "keep";
  std::string output;
  EXPECT_EQ(test::run_command(cli() + " attention -q --model " + quote(model) + " " + quote(dir / "ok.png") +
                                  " --out " + quote(dir / "mine") + " 2>&1",
                              &output),
            6)
      << output;
  EXPECT_NE(output.find("not replaced"), std::string::npos) << output;
  EXPECT_EQ(count_entries(dir / "mine"), 1);
  EXPECT_EQ(count_entries(dir), 2);
}

}  // namespace
}  // namespace perceiver
