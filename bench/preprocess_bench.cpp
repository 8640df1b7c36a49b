// bench_preprocess: one image from JPEG bytes to the model's input, as `perceiver classify` does it: decode
// (libjpeg-turbo, EXIF orientation, RGB), then PerceiverImageProcessor's centre crop, bicubic resize,
// rescale and normalise into float32 [3, 224, 224]. Prints min/median milliseconds of each step and of the
// whole, single-threaded, after warm-up calls.
//
// Without --image it times a 640 x 480 JPEG (quality 90, 4:2:0, as cameras and most web images are) made in
// memory from samples/cat.jpg: scaled up with Pillow's bicubic and given a fine deterministic texture, so
// that it carries as much detail as a photo of that size (about 100 KB); --write-jpeg saves it.
//   bench_preprocess [--image FILE] [--reps 200] [--json] [--write-jpeg FILE]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

// after <cstdio>: jpeglib.h uses FILE and size_t without including their headers
#include <jpeglib.h>

#include "image/image.h"
#include "image/preprocess.h"

namespace {

using namespace perceiver;

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  return {std::istreambuf_iterator<char>(in), {}};
}

// RGB -> JPEG bytes (libjpeg-turbo, quality 90, 4:2:0 chroma subsampling: the library's default).
std::vector<uint8_t> encode_jpeg(const ImageU8& image, int quality) {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = image.width;
  cinfo.image_height = image.height;
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(&image.rgb[size_t(cinfo.next_scanline) * image.width * 3]);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  std::vector<uint8_t> bytes(buffer, buffer + size);
  jpeg_destroy_compress(&cinfo);
  std::free(buffer);
  return bytes;
}

// samples/cat.jpg scaled to 640 x 480, plus +-12 levels of a fixed pseudo-random texture.
std::vector<uint8_t> make_test_jpeg() {
  ImageU8 photo =
      resize_like_pillow(load_image(PERCEIVER_SOURCE_DIR "/samples/cat.jpg"), 640, 480, Resample::bicubic);
  uint32_t s = 2463534242u;
  for (uint8_t& v : photo.rgb) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    v = uint8_t(std::clamp(int(v) + int(s % 25) - 12, 0, 255));
  }
  return encode_jpeg(photo, 90);
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
  std::string image_path, write_path;
  int reps = 200;
  bool json = false;
  CLI::App app{"Decode + preprocess one image as perceiver classify does (single thread)"};
  app.add_option("--image", image_path, "JPEG/PNG/WebP file (default: a 640x480 JPEG made in memory)");
  app.add_option("--reps", reps, "timed repetitions")->check(CLI::Range(1, 1000000));
  app.add_flag("--json", json, "print one JSON object");
  app.add_option("--write-jpeg", write_path, "save the generated 640x480 JPEG here");
  CLI11_PARSE(app, argc, argv);
  try {
    const std::vector<uint8_t> bytes = image_path.empty() ? make_test_jpeg() : read_file(image_path);
    const std::string name = image_path.empty() ? "generated-640x480.jpg" : image_path;
    if (!write_path.empty())
      std::ofstream(write_path, std::ios::binary)
          .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
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
