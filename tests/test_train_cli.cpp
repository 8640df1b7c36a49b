// perceiver train-head and eval end to end on the real Fashion-MNIST model and its 16 sample PNGs, regrouped
// into two new classes: a loadable, deterministic model directory and consistent evaluation figures.
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/npy.h"
#include "test_util.h"

namespace perceiver {
namespace {

std::string cli() { return test::cli_path().string(); }
std::string quote(const std::filesystem::path& p) { return test::shell_quote(p); }
std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// footwear / clothes folders from the sample images (file names carry the original class).
std::filesystem::path make_dataset() {
  const auto root = test::temp_dir("train_cli") / "data";
  const auto images = test::shared_dir() / "models" / "fashion-mnist-conv" / "expected" / "images";
  for (const auto& e : std::filesystem::directory_iterator(images)) {
    const std::string name = e.path().filename().string();
    const bool shoe = name.find("sandal") != std::string::npos || name.find("sneaker") != std::string::npos ||
                      name.find("ankle_boot") != std::string::npos;
    const auto dir = root / (shoe ? "footwear" : "clothes");
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(e.path(), dir / name);
  }
  return root;
}

// The reference backend's encoder latents, so the files match whatever the CPU and thread count
// (docs/train-head.md, Determinism).
TEST(TrainCli, TrainHeadWritesADeterministicLoadableModel) {
  const auto model = test::shared_dir() / "models" / "fashion-mnist-conv";
  const auto data = make_dataset();
  const auto out1 = data.parent_path() / "m1", out2 = data.parent_path() / "m2";
  std::string output;
  const std::string args =
      " --model " + quote(model) + " --data " + quote(data) +
      " --epochs 3 --batch-size 4 --lr 3e-3 --val-split 0.25 --seed 7 --backend reference -q";
  ASSERT_EQ(test::run_command(cli() + " train-head" + args + " --out " + quote(out1) + " --json", &output), 0)
      << output;
  auto summary = nlohmann::json::parse(output.substr(output.find('{')));
  EXPECT_EQ(summary["classes"], nlohmann::json::array({"clothes", "footwear"}));
  EXPECT_EQ(summary["epochs"].size(), 3u);
  EXPECT_EQ(int(summary["train_images"]) + int(summary["val_images"]), 16);
  ASSERT_EQ(test::run_command(cli() + " train-head" + args + " --threads 1 --out " + quote(out2), &output), 0)
      << output;
  EXPECT_EQ(read_all(out1 / "model.safetensors"), read_all(out2 / "model.safetensors"));
  EXPECT_EQ(read_all(out1 / "config.json"), read_all(out2 / "config.json"));
  auto config = nlohmann::json::parse(read_all(out1 / "config.json"));
  EXPECT_EQ(config["id2label"], nlohmann::json({{"0", "clothes"}, {"1", "footwear"}}));
  EXPECT_EQ(config["num_labels"], 2);

  // The new model classifies and evaluates on the same folder layout.
  ASSERT_EQ(
      test::run_command(cli() + " classify --json -k 1 --model " + quote(out1) + " " +
                            quote(data / "footwear") + " --logits-out " + quote(data.parent_path() / "l.npy"),
                        &output),
      0)
      << output;
  EXPECT_EQ(read_npy(data.parent_path() / "l.npy").shape, (std::vector<int64_t>{4, 2}));
  ASSERT_EQ(
      test::run_command(cli() + " eval --json -q --model " + quote(out1) + " --data " + quote(data), &output),
      0)
      << output;
  auto eval = nlohmann::json::parse(output);
  EXPECT_EQ(eval["images"], 16);
  EXPECT_EQ(eval["top5_accuracy"], 1.0);  // two classes
  EXPECT_EQ(eval["per_class"].size(), 2u);
  EXPECT_GT(eval["images_per_second"], 0.0);

  // Bad usage.
  EXPECT_EQ(test::run_command(cli() + " train-head --model " + quote(model) + " --data " +
                                  quote(data / "missing") + " --out " + quote(out1) + " -q",
                              &output),
            3);
  EXPECT_EQ(test::run_command(cli() + " train-head" + args + " --out " + quote(model), &output), 2) << output;
}

TEST(TrainCli, EvalOnTheOriginalLabels) {
  // The sample images in folders named like the model's labels (normalised: "t_shirt_top" ~ "T-shirt/top").
  const auto root = test::temp_dir("eval_cli") / "data";
  const auto model = test::shared_dir() / "models" / "fashion-mnist-conv";
  for (const auto& e : std::filesystem::directory_iterator(model / "expected" / "images")) {
    const std::string name = e.path().stem().string();  // 00019_0_t_shirt_top
    const std::string label = name.substr(name.find('_', 6) + 1);
    std::filesystem::create_directories(root / label);
    std::filesystem::copy_file(e.path(), root / label / e.path().filename());
  }
  std::string output;
  ASSERT_EQ(test::run_command(cli() + " eval -q --model " + quote(model) + " --data " + quote(root), &output),
            0)
      << output;
  EXPECT_NE(output.find("top-1 accuracy"), std::string::npos) << output;
  EXPECT_NE(output.find("T-shirt/top"), std::string::npos) << output;
  ASSERT_EQ(test::run_command(cli() + " eval --json -q --model " + quote(model) + " --data " + quote(root),
                              &output),
            0);
  auto j = nlohmann::json::parse(output);
  EXPECT_GE(double(j["top1_accuracy"]), 0.75);  // a model at 89.79% on the test set
  std::filesystem::create_directories(root / "robots");
  std::filesystem::copy_file(model / "expected" / "images" / "00000_9_ankle_boot.png",
                             root / "robots" / "r.png");
  EXPECT_EQ(test::run_command(cli() + " eval -q --model " + quote(model) + " --data " + quote(root), &output),
            3);
  EXPECT_NE(output.find("robots"), std::string::npos) << output;
}

}  // namespace
}  // namespace perceiver
