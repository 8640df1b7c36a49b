// Shared body of the image targets: decode (format sniffed), EXIF orientation, then Pillow-exact
// preprocessing.
#pragma once

#include <vector>

#include "fuzz_util.h"
#include "image/image.h"
#include "image/preprocess.h"

namespace perceiver::fuzz {

inline void decode_and_preprocess(const uint8_t* data, size_t size) {
  expect_only_errors([&] {
    DecodeOptions options;
    options.max_pixels = 1 << 20;  // 2 Mpixel: keeps the fuzzer's memory low; the check itself is exercised
    ImageU8 image = load_image_from_memory(data, size, "image", options);
    if (image.width < 1 || image.height < 1 || image.rgb.size() != size_t(image.width) * image.height * 3)
      __builtin_trap();
    PreprocessorConfig config;          // PerceiverImageProcessor defaults: crop 256, bicubic 224x224
    config.height = config.width = 32;  // smaller output, same code paths
    config.crop_height = config.crop_width = 37;
    config.resample = static_cast<Resample>(size % 6);  // every Pillow filter gets its turn
    int h = 0, w = 0;
    preprocessed_size(config, image, &h, &w);
    std::vector<float> out(size_t(3) * h * w);
    preprocess(image, config, out.data());
  });
}

}  // namespace perceiver::fuzz
