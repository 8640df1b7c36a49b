// WebP via libwebp. Pillow 9.4 decodes through WebPAnimDecoder (RGBA, not premultiplied) and convert("RGB")
// drops alpha; for a still image that is the frame's own RGB, which WebPDecodeRGBInto gives directly.
// Its EXIF is the first EXIF chunk of an extended (VP8X) file whose EXIF flag is set, as WebPDemux sees it.
#include <webp/decode.h>

#include <algorithm>
#include <cstring>
#include <new>

#include "image/image_internal.h"

namespace perceiver::image_detail {

namespace {

uint32_t le32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

int webp_orientation(const uint8_t* data, size_t size) {
  // RIFF header (12 bytes), then chunks: fourcc, little-endian size, payload padded to an even length.
  if (size < 30 || std::memcmp(data + 12, "VP8X", 4) != 0) return 0;
  const uint8_t flags = data[20];
  if (!(flags & 0x08)) return 0;  // EXIF flag
  size_t end = std::min<size_t>(size, size_t(le32(data + 4)) + 8);
  size_t pos = 12;
  while (pos + 8 <= end) {
    const size_t length = le32(data + pos + 4);
    if (length > end - pos - 8) break;
    if (std::memcmp(data + pos, "EXIF", 4) == 0) return exif_orientation(data + pos + 8, length);
    pos += 8 + length + (length & 1);
  }
  return 0;
}

}  // namespace

Decoded decode_webp(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& options) {
  WebPBitstreamFeatures features;
  VP8StatusCode status = WebPGetFeatures(data, size, &features);
  if (status == VP8_STATUS_NOT_ENOUGH_DATA) fail(name, "image file is truncated");
  if (status != VP8_STATUS_OK)
    fail(name, "broken WebP data (libwebp status " + std::to_string(int(status)) + ")");
  check_declared_size(features.width, features.height, name, options);
  if (features.has_animation) fail(name, "animated WebP is not supported");
  Decoded decoded;
  try {
    decoded.image.width = features.width;
    decoded.image.height = features.height;
    decoded.image.rgb.resize(size_t(features.width) * size_t(features.height) * 3);
  } catch (const std::bad_alloc&) {
    fail(name, "out of memory decoding the image");
  }
  const int stride = features.width * 3;
  if (!WebPDecodeRGBInto(data, size, decoded.image.rgb.data(), decoded.image.rgb.size(), stride))
    fail(name, "broken or truncated WebP data");
  decoded.orientation = webp_orientation(data, size);
  return decoded;
}

}  // namespace perceiver::image_detail
