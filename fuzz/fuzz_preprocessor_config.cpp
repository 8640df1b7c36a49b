// preprocessor_config.json, then the crop/resize geometry it implies on a small image.
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "image/preprocess.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace perceiver;
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::expect_only_errors([&] {
    PreprocessorConfig config = parse_preprocessor_config(text, "preprocessor_config.json");
    ImageU8 image;
    image.width = 13;
    image.height = 7;
    image.rgb.resize(size_t(image.width) * image.height * 3);
    for (size_t i = 0; i < image.rgb.size(); ++i) image.rgb[i] = uint8_t(i * 37);
    int h = 0, w = 0;
    preprocessed_size(config, image, &h, &w);
    if (h < 1 || w < 1) __builtin_trap();
    if (int64_t(h) * w > (1 << 16)) return;  // big but legal outputs: not worth the fuzzer's time
    std::vector<float> out(size_t(3) * h * w);
    preprocess(image, config, out.data());
  });
  return 0;
}
