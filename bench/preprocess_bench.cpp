// bench_preprocess: one image from JPEG bytes to the model's input, as `perceiver classify` does it: decode
// (libjpeg-turbo, EXIF orientation, RGB), then PerceiverImageProcessor's centre crop, bicubic resize,
// rescale and normalise into float32 [3, 224, 224]. Prints min/median milliseconds of each step and of the
// whole, single-threaded, after warm-up calls.
//
// The default image, samples/cat-640x480.jpg (quality 90, 4:2:0, 96 KB, as cameras and most web images are),
// is samples/cat.jpg scaled up with Pillow's bicubic plus a fine pseudo-random texture of +-12 levels, so
// that it carries as much detail as a photo of that size.
//   bench_preprocess [--image FILE] [--reps 200] [--json]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "image/image.h"
#include "image/preprocess.h"

namespace {

using namespace perceiver;

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  return {std::istreambuf_iterator<char>(in), {}};
}

struct Stats {
  double min_ms, median_ms;
};
Stats stats(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  return {ms.front(), ms[ms.size() / 2]};
}

}  // namespace

int main(int argc, char** argv) {
  std::string image_path = PERCEIVER_SOURCE_DIR "/samples/cat-640x480.jpg";
  int reps = 200;
  bool json = false;
  CLI::App app{"Decode + preprocess one image as perceiver classify does (single thread)"};
  app.add_option("--image", image_path, "JPEG/PNG/WebP file (default: samples/cat-640x480.jpg)");
  app.add_option("--reps", reps, "timed repetitions")->check(CLI::Range(1, 1000000));
  app.add_flag("--json", json, "print one JSON object");
  CLI11_PARSE(app, argc, argv);
  try {
    const std::vector<uint8_t> bytes = read_file(image_path);
    const std::string& name = image_path;
    const PreprocessorConfig config;  // PerceiverImageProcessor's defaults = deepmind/vision-perceiver-*
    std::vector<double> decode_ms, preprocess_ms, total_ms;
    ImageU8 image;
    std::vector<float> pixels;
    for (int r = -5; r < reps; ++r) {  // 5 warm-up calls
      const auto t0 = std::chrono::steady_clock::now();
      image = load_image_from_memory(bytes.data(), bytes.size(), name);
      const auto t1 = std::chrono::steady_clock::now();
      int h = 0, w = 0;
      preprocessed_size(config, image, &h, &w);
      pixels.resize(size_t(3) * h * w);
      preprocess(image, config, pixels.data());
      const auto t2 = std::chrono::steady_clock::now();
      if (r < 0) continue;
      decode_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      preprocess_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
      total_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t0).count());
    }
    const Stats d = stats(decode_ms), p = stats(preprocess_ms), t = stats(total_ms);
    if (json) {
      nlohmann::json j = {{"image", name},
                          {"width", image.width},
                          {"height", image.height},
                          {"bytes", bytes.size()},
                          {"reps", reps},
                          {"decode_min_ms", d.min_ms},
                          {"decode_median_ms", d.median_ms},
                          {"preprocess_min_ms", p.min_ms},
                          {"preprocess_median_ms", p.median_ms},
                          {"min_ms", t.min_ms},
                          {"median_ms", t.median_ms}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%s: %d x %d, %zu bytes -> float32 [3, 224, 224], %d repetitions, 1 thread\n", name.c_str(),
                  image.width, image.height, bytes.size(), reps);
      std::printf("%-34s %9s %9s\n", "step", "min ms", "median ms");
      std::printf("%-34s %9.3f %9.3f\n", "decode (JPEG -> RGB)", d.min_ms, d.median_ms);
      std::printf("%-34s %9.3f %9.3f\n", "crop + resize + normalise", p.min_ms, p.median_ms);
      std::printf("%-34s %9.3f %9.3f\n", "total", t.min_ms, t.median_ms);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_preprocess: %s\n", e.what());
    return 1;
  }
  return 0;
}
