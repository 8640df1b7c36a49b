// Internals of the image module shared by the decoders, the EXIF reader and load_image.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "image/image.h"
#include "image/preprocess.h"

namespace perceiver::image_detail {

// Throws perceiver::Error(ErrorKind::bad_input, "<name>: <what>").
[[noreturn]] void fail(const std::string& name, const std::string& what);

// Pillow's DecompressionBombError check on the declared size, before anything is allocated; also refuses 0.
void check_declared_size(int64_t width, int64_t height, const std::string& name,
                         const DecodeOptions& options);

// A decoded image (already RGB, as convert("RGB") gives it) and its EXIF orientation (0 = none).
struct Decoded {
  ImageU8 image;
  int orientation = 0;
};

Decoded decode_jpeg(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& options);
Decoded decode_png(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& options);
Decoded decode_webp(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& options);

// Orientation tag (0x0112) of IFD0 of an EXIF blob as Pillow's Image.getexif() reads it: an optional
// "Exif\0\0" prefix, then a TIFF header. Returns 0 when absent or unreadable.
int exif_orientation(const uint8_t* data, size_t size);

// Pillow's XMP fallback: the digit of the first match of  tiff:Orientation(="|>)([0-9])  or 0.
int xmp_orientation(const std::string& xmp);

// Orientations 2..8 as PIL.ImageOps.exif_transpose applies them; anything else leaves the image as it is.
ImageU8 apply_orientation(ImageU8 image, int orientation);

// Read-only window on interleaved RGB rows: pixel (x, y) channel c at data[y * stride + x * 3 + c].
struct RgbView {
  const uint8_t* data = nullptr;
  int width = 0;
  int height = 0;
  size_t stride = 0;  // bytes per row
};

// Pillow's Image.resize(out_width x out_height, filter) of `in` (8-bit RGB), written to *out.
void resize_view(const RgbView& in, int out_width, int out_height, Resample filter, ImageU8* out);

}  // namespace perceiver::image_detail
