// Image decoding the way Hugging Face's load_image does it (Pillow: open, exif_transpose, convert("RGB")).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "perceiver/image.h"

namespace perceiver {

// The public 8-bit RGB image and decode limits (include/perceiver/image.h).
using ImageU8 = Image;

// Decodes JPEG / PNG / WebP (by magic bytes), applies the EXIF orientation, converts to RGB as Pillow's
// convert("RGB") does. Throws perceiver::Error(ErrorKind::bad_input, "<file>: ...") where Pillow would
// refuse.
ImageU8 load_image(const std::filesystem::path& path, const DecodeOptions& options = {});

// Same, from bytes in memory; `name` is used in error messages.
ImageU8 load_image_from_memory(const uint8_t* data, size_t size, const std::string& name,
                               const DecodeOptions& options = {});

}  // namespace perceiver
