// The perceiver command line end to end: parity through --pixels / --logits-out, images, JSON, exit codes.
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/npy.h"
#include "kernels/fast_kernels.h"
#include "kernels/int8_gemm.h"
#include "test_util.h"

namespace perceiver {
namespace {

std::string cli() { return test::cli_path().string(); }
std::string quote(const std::filesystem::path& p) { return test::shell_quote(p); }

TEST(Cli, ClassifyPixelsReproducesHuggingFaceLogitsFromBothWeightFiles) {
  for (std::string variant : {"conv-tiny", "fourier-tiny", "learned-tiny"})
    for (std::string weights : {"model.safetensors", "pytorch_model.bin"}) {
      SCOPED_TRACE(variant + " " + weights);
      auto dir = test::vectors_dir() / variant;
      auto out = test::temp_dir("cli") / "logits.npy";
      std::string output;
      int rc = test::run_command(cli() + " classify --model " + quote(dir) + " --weights " +
                                     quote(dir / weights) + " --pixels " + quote(dir / "pixel_values.npy") +
                                     " --logits-out " + quote(out),
                                 &output);
      ASSERT_EQ(rc, 0) << output;
      NpyArray got = read_npy(out), want = read_npy(dir / "logits.npy");
      EXPECT_EQ(got.shape, want.shape);
      EXPECT_TRUE(test::AllCloseScaled(got.to_f32(), want.to_f32(), 1e-4));
      EXPECT_NE(output.find("LABEL_"), std::string::npos) << output;
    }
}

TEST(Cli, JsonLinesHaveTopKLabelsAndProbabilities) {
  auto dir = test::vectors_dir() / "conv-tiny";
  std::string output;
  ASSERT_EQ(test::run_command(cli() + " classify --json --top-k 3 --model " + quote(dir) + " --pixels " +
                                  quote(dir / "pixel_values.npy") + " 2>/dev/null",
                              &output),
            0);
  std::istringstream lines(output);
  std::string line;
  int rows = 0;
  NpyArray logits = read_npy(dir / "logits.npy");
  std::vector<float> want = logits.to_f32();
  while (std::getline(lines, line)) {
    auto j = nlohmann::json::parse(line);
    ASSERT_EQ(j["labels"].size(), 3u);
    ASSERT_EQ(j["probabilities"].size(), 3u);
    EXPECT_GE(j["probabilities"][0].get<double>(), j["probabilities"][1].get<double>());
    // The top label is the argmax of HF's logits for that row.
    int row = j["index"];
    auto begin = want.begin() + row * 10;
    int argmax = static_cast<int>(std::max_element(begin, begin + 10) - begin);
    EXPECT_EQ(j["labels"][0], "LABEL_" + std::to_string(argmax));
    ++rows;
  }
  EXPECT_EQ(rows, 2);
}

TEST(Cli, ClassifyImagesMatchesHuggingFaceOnTrainedFashionMnist) {
  auto model = test::shared_dir() / "models" / "fashion-mnist-conv";
  auto out = test::temp_dir("fm") / "logits.npy";
  std::string output;
  int rc = test::run_command(cli() + " classify --batch-size 5 --model " + quote(model) + " " +
                                 quote(model / "expected" / "images") + " --logits-out " + quote(out),
                             &output);
  ASSERT_EQ(rc, 0) << output;
  NpyArray got = read_npy(out), want = read_npy(model / "expected" / "images_logits.npy");
  EXPECT_EQ(got.shape, want.shape);
  EXPECT_TRUE(test::AllCloseScaled(got.to_f32(), want.to_f32(), 1e-4));
  EXPECT_NE(output.find("00000_9_ankle_boot.png\n"), std::string::npos) << output;
  EXPECT_NE(output.find("Ankle boot"), std::string::npos) << output;
}

TEST(Cli, PreprocessWritesWhatTheModelSees) {
  auto model = test::shared_dir() / "models" / "fashion-mnist-conv";
  auto out = test::temp_dir("pre") / "pixels.npy";
  std::string output;
  ASSERT_EQ(test::run_command(cli() + " preprocess --model " + quote(model) + " " +
                                  quote(model / "expected" / "images" / "00000_9_ankle_boot.png") +
                                  " --out " + quote(out),
                              &output),
            0)
      << output;
  NpyArray pixels = read_npy(out);
  EXPECT_EQ(pixels.shape, (std::vector<int64_t>{1, 3, 56, 56}));
}

// Bad input: one line naming the file, the documented exit code, and no output file left behind.
TEST(Cli, BadInputsFailCleanlyWithoutPartialOutput) {
  auto tmp = test::temp_dir("bad");
  auto dir = test::vectors_dir() / "conv-tiny";
  auto out = tmp / "logits.npy";
  std::ofstream(tmp / "garbage.npy") << "\x93NUMPY garbage";
  std::ofstream(tmp / "cat.jpg") << "not a jpeg at all";
  struct Case {
    std::string args;
    int exit_code;
    std::string mentions;
  };
  std::vector<Case> cases = {
      {"classify --model " + quote(tmp / "no-such-model") + " --pixels " + quote(dir / "pixel_values.npy"), 4,
       "no-such-model"},
      {"classify --model " + quote(dir) + " --pixels " + quote(tmp / "garbage.npy"), 3, "garbage.npy"},
      {"classify --model " + quote(dir) + " --pixels " + quote(tmp / "missing.npy"), 3, "missing.npy"},
      {"classify --model " + quote(dir) + " --preprocess-defaults " + quote(tmp / "cat.jpg"), 3, "cat.jpg"},
      {"classify --model " + quote(dir) + " " + quote(dir / "pixel_values.npy"), 4,
       "preprocessor_config.json"},
      {"classify --model " + quote(dir) + " --weights " + quote(tmp / "garbage.npy") + " --pixels " +
           quote(dir / "pixel_values.npy"),
       4, "garbage.npy"},
      {"classify --model " + quote(dir) + " --pixels " + quote(dir / "pixel_values.npy") + " --logits-out " +
           quote(tmp / "no-such-dir" / "x.npy"),
       6, "x.npy"},
      {"classify --model " + quote(dir) + " --bogus-flag", 2, "bogus"},
      {"frobnicate", 2, ""},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    std::string output;
    const bool has_out = c.args.find("--logits-out") != std::string::npos;
    int rc =
        test::run_command(cli() + " " + c.args + (has_out ? "" : " --logits-out " + quote(out)), &output);
    EXPECT_EQ(rc, c.exit_code) << output;
    EXPECT_NE(output.find("error: "), std::string::npos) << output;
    EXPECT_NE(output.find(c.mentions), std::string::npos) << output;
    EXPECT_FALSE(std::filesystem::exists(out));
  }
  // Nothing but our inputs is left in the folder (no temporary files).
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(tmp)) files += e.is_regular_file();
  EXPECT_EQ(files, 2);
}

// perceiver bench --json: one object with the fields the benchmark scripts read, consistent with each other,
// from both weight files and every precision.
TEST(Cli, BenchJsonReportsConsistentTimings) {
  auto dir = test::vectors_dir() / "conv-tiny";
  for (std::string weights : {"model.safetensors", "pytorch_model.bin"})
    for (std::string precision : {"fp32", "bf16", "int8"}) {
      SCOPED_TRACE(weights + " " + precision);
      std::string output;
      const std::string command = cli() + " bench --json --model " + quote(dir) + " --weights " +
                                  quote(dir / weights) + " --precision " + precision +
                                  " --batch 2 --iters 3 --warmup 1 --threads 2";
      if ((precision == "bf16" && !fast::use_avx512()) ||
          (precision == "int8" && int8::best_kernel() == int8::Kernel::plain)) {  // refused on this CPU
        EXPECT_EQ(test::run_command(command + " 2>&1", &output), 2) << output;
        EXPECT_NE(output.find("error: --precision " + precision + " needs a CPU with"), std::string::npos)
            << output;
        continue;
      }
      ASSERT_EQ(test::run_command(command + " 2>/dev/null", &output), 0) << output;
      const auto j = nlohmann::json::parse(output);
      for (const char* key : {"median_ms", "min_ms", "images_per_s", "gflops_per_s", "peak_rss_mb", "load_ms",
                              "median_ms_per_image", "gflop_per_image", "times_ms", "cpu", "backend"})
        ASSERT_TRUE(j.contains(key)) << key;
      ASSERT_EQ(j["times_ms"].size(), 3u);
      const double median = j["median_ms"], min = j["min_ms"];
      EXPECT_GT(min, 0.0);
      EXPECT_LE(min, median);
      EXPECT_EQ(j["batch"], 2);
      EXPECT_EQ(j["precision"], precision);
      EXPECT_NEAR(j["median_ms_per_image"].get<double>(), median / 2, 1e-9 * median);
      EXPECT_NEAR(j["images_per_s"].get<double>(), 2000.0 / median, 1e-9 * 2000.0 / median);
      EXPECT_NEAR(j["gflops_per_s"].get<double>(),
                  j["gflop_per_image"].get<double>() * j["images_per_s"].get<double>(),
                  1e-9 * j["gflops_per_s"].get<double>());
      EXPECT_GT(j["gflop_per_image"].get<double>(), 0.0);
      EXPECT_GT(j["load_ms"].get<double>(), 0.0);
      EXPECT_GE(j["peak_rss_mb"].get<double>(), j["peak_rss_after_load_mb"].get<double>());
      EXPECT_FALSE(j["cpu"].get<std::string>().empty());
      // The CPU's peak for the precision's instruction (0 where it has none) and the fraction of it reached.
      const double peak = j["peak_gflops_per_s"], fraction = j["fraction_of_peak"];
      if (peak > 0) {
        EXPECT_NEAR(fraction, j["gflops_per_s"].get<double>() / peak, 1e-9);
        EXPECT_GT(fraction, 0.0);
        // gflop_per_image counts HF's operations; query folding skips the cross-attention's key projection,
        // about 40 % of this tiny model's count, so the fraction of the executed work is 0.6x the one shown.
        EXPECT_LT(fraction, 1.5 / 0.6);
        EXPECT_FALSE(j["peak_instruction"].get<std::string>().empty());
      } else {
        EXPECT_EQ(fraction, 0.0);
      }
    }
}

TEST(Cli, HelpDescribesEverySubcommand) {
  std::string output;
  ASSERT_EQ(test::run_command(cli() + " --help", &output), 0);
  for (const char* word : {"classify", "preprocess", "bench", "info"})
    EXPECT_NE(output.find(word), std::string::npos);
  ASSERT_EQ(test::run_command(cli() + " classify --help", &output), 0);
  for (const char* flag : {"--model", "--pixels", "--logits-out", "--top-k", "--json", "--threads",
                           "--batch-size", "--weights", "--precision"})
    EXPECT_NE(output.find(flag), std::string::npos) << flag;
}

}  // namespace
}  // namespace perceiver
