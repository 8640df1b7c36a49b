// The public image functions (include/perceiver/image.h) over the decoders of src/image.
#include "perceiver/image.h"

#include <string>

#include "image/image.h"
#include "perceiver/error.h"

namespace perceiver {

Image decode_image_file(const std::filesystem::path& path, const DecodeOptions& options) {
  return load_image(path, options);
}

Image decode_image(const void* data, size_t size, const std::string& name, const DecodeOptions& options) {
  return load_image_from_memory(static_cast<const uint8_t*>(data), size, name, options);
}

Image image_from_pixels(const uint8_t* pixels, int width, int height, int channels, size_t stride) {
  auto bad = [](const std::string& what) { throw Error(ErrorKind::bad_input, "image pixels: " + what); };
  if (width <= 0 || height <= 0 || int64_t(width) * height > (int64_t(1) << 31))
    bad("size " + std::to_string(width) + "x" + std::to_string(height) + " is out of range");
  if (channels != 1 && channels != 3 && channels != 4)
    bad(std::to_string(channels) + " channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)");
  const size_t row_bytes = size_t(width) * channels;
  if (stride == 0) stride = row_bytes;
  if (stride < row_bytes) bad("row stride " + std::to_string(stride) + " is below width x channels");
  if (!pixels) bad("no pixel data");
  Image image;
  image.width = width;
  image.height = height;
  image.rgb.resize(size_t(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    const uint8_t* src = pixels + size_t(y) * stride;
    uint8_t* dst = &image.rgb[size_t(y) * width * 3];
    for (int x = 0; x < width; ++x, dst += 3) {
      if (channels == 1) {
        dst[0] = dst[1] = dst[2] = src[x];
      } else {  // RGB, or RGBA with the alpha dropped (Pillow's convert("RGB"))
        const uint8_t* p = src + size_t(x) * channels;
        dst[0] = p[0];
        dst[1] = p[1];
        dst[2] = p[2];
      }
    }
  }
  return image;
}

}  // namespace perceiver
