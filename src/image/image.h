// Image decoding the way Hugging Face's load_image does it (Pillow: open, exif_transpose, convert("RGB")).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace perceiver {

// 8-bit RGB image, interleaved rows: rgb[(y * width + x) * 3 + c].
struct ImageU8 {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
};

struct DecodeOptions {
  // Pillow's Image.MAX_IMAGE_PIXELS: refuse images above 2x this (Pillow raises DecompressionBombError).
  int64_t max_pixels = 89478485;
};

// Decodes JPEG / PNG / WebP (by magic bytes), applies the EXIF orientation, converts to RGB as Pillow's
// convert("RGB") does. Throws perceiver::Error(ErrorKind::bad_input, "<file>: ...") where Pillow would
// refuse.
ImageU8 load_image(const std::filesystem::path& path, const DecodeOptions& options = {});

// Same, from bytes in memory; `name` is used in error messages.
ImageU8 load_image_from_memory(const uint8_t* data, size_t size, const std::string& name,
                               const DecodeOptions& options = {});

}  // namespace perceiver
