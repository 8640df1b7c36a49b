// perceiver.cpp: images as the models see them before preprocessing.
//
// Decoding follows Hugging Face's load_image (Pillow: open, ImageOps.exif_transpose, convert("RGB")), so the
// pixels match what `transformers` feeds PerceiverImageProcessor. Every function here is thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace perceiver {

// 8-bit RGB image, interleaved rows: rgb[(y * width + x) * 3 + c], c = R, G, B.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
};

struct DecodeOptions {
  // Pillow's Image.MAX_IMAGE_PIXELS: refuse images above 2x this (Pillow raises DecompressionBombError).
  int64_t max_pixels = 89478485;
};

// Decodes a JPEG / PNG / WebP file (recognised by its magic bytes, not its name), applies the EXIF
// orientation and converts to RGB as Pillow's convert("RGB") does. Throws Error(ErrorKind::bad_input,
// "<file>: <problem>") for a missing, corrupt, unsupported or oversized image.
Image decode_image_file(const std::filesystem::path& path, const DecodeOptions& options = {});

// The same from an encoded file in memory; `name` stands for the file in error messages.
Image decode_image(const void* data, size_t size, const std::string& name = "<image bytes>",
                   const DecodeOptions& options = {});

// An image from raw 8-bit pixels: `channels` 1 (gray), 3 (RGB) or 4 (RGBA, alpha dropped as Pillow's
// convert("RGB") drops it). Rows are `stride` bytes apart (0: width * channels). Throws Error(bad_input) for
// a bad size, channel count or stride.
Image image_from_pixels(const uint8_t* pixels, int width, int height, int channels, size_t stride = 0);

}  // namespace perceiver
