// perceiver embed: the three poolings, the .npy + sidecar list, --json.
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/npy.h"
#include "test_util.h"

namespace perceiver {
namespace {

std::string cli() { return test::cli_path().string(); }
std::string quote(const std::filesystem::path& p) { return test::shell_quote(p); }

TEST(Embed, PoolingsAreConsistent) {
  const auto model = test::shared_dir() / "models" / "fashion-mnist-conv";
  const auto images = model / "expected" / "images";
  const auto dir = test::temp_dir("embed");
  std::string output;
  for (std::string pool : {"latents", "mean", "decoder"})
    ASSERT_EQ(test::run_command(cli() + " embed -q --model " + quote(model) + " " + quote(images) +
                                    " --pool " + pool + " --out " + quote(dir / (pool + ".npy")),
                                &output),
              0)
        << output;
  NpyArray latents = read_npy(dir / "latents.npy"), mean = read_npy(dir / "mean.npy"),
           decoder = read_npy(dir / "decoder.npy");
  EXPECT_EQ(latents.shape, (std::vector<int64_t>{16, 64, 128}));
  EXPECT_EQ(mean.shape, (std::vector<int64_t>{16, 128}));
  EXPECT_EQ(decoder.shape, (std::vector<int64_t>{16, 128}));
  auto z = latents.to_f32(), m = mean.to_f32();
  for (int b = 0; b < 16; b += 5)
    for (int d = 0; d < 128; d += 17) {
      double acc = 0;
      for (int l = 0; l < 64; ++l) acc += z[(size_t(b) * 64 + l) * 128 + d];
      EXPECT_NEAR(m[size_t(b) * 128 + d], acc / 64, 1e-5);
    }
  // The sidecar lists the files in row order.
  std::ifstream list(dir / "mean.txt");
  std::vector<std::string> lines;
  for (std::string line; std::getline(list, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 16u);
  EXPECT_NE(lines[0].find("00000_9_ankle_boot.png"), std::string::npos);

  // --json on one image gives the same decoder features.
  ASSERT_EQ(test::run_command(cli() + " embed --json --pool decoder --model " + quote(model) + " " +
                                  quote(images / "00000_9_ankle_boot.png"),
                              &output),
            0)
      << output;
  auto j = nlohmann::json::parse(output);
  EXPECT_EQ(j["shape"], nlohmann::json::array({128}));
  auto want = decoder.to_f32();
  for (int d = 0; d < 128; ++d) EXPECT_NEAR(float(j["features"][d]), want[d], 1e-5);

  EXPECT_EQ(test::run_command(cli() + " embed -q --model " + quote(model) + " " + quote(images), &output), 2);
  EXPECT_EQ(test::run_command(
                cli() + " embed -q --pool max --model " + quote(model) + " " + quote(images) + " --out x.npy",
                &output),
            2);
}

}  // namespace
}  // namespace perceiver
