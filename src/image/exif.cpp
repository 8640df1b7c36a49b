// EXIF orientation as Pillow 9.4 reads it (Image.getexif -> ImageFileDirectory_v2 of IFD0), and
// ImageOps.exif_transpose's geometric transforms.
#include <cmath>
#include <cstring>
#include <utility>

#include "image/image_internal.h"

namespace perceiver::image_detail {

namespace {

struct TiffReader {
  const uint8_t* data;
  size_t size;
  bool big_endian;

  bool has(size_t offset, size_t n) const { return offset <= size && n <= size - offset; }
  uint32_t u16(size_t offset) const {
    const uint8_t* p = data + offset;
    return big_endian ? (uint32_t(p[0]) << 8 | p[1]) : (uint32_t(p[1]) << 8 | p[0]);
  }
  uint32_t u32(size_t offset) const {
    const uint8_t* p = data + offset;
    return big_endian ? (uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3])
                      : (uint32_t(p[3]) << 24 | uint32_t(p[2]) << 16 | uint32_t(p[1]) << 8 | p[0]);
  }
};

// Bytes per value of the TIFF field types Pillow knows (0 = unknown type, skipped).
size_t type_size(uint32_t type) {
  switch (type) {
    case 1:
    case 2:
    case 6:
    case 7:
      return 1;  // BYTE ASCII SBYTE UNDEFINED
    case 3:
    case 8:
      return 2;  // SHORT SSHORT
    case 4:
    case 9:
    case 11:
    case 13:
      return 4;  // LONG SLONG FLOAT IFD
    case 5:
    case 10:
    case 12:
      return 8;  // RATIONAL SRATIONAL DOUBLE
    default:
      return 0;
  }
}

// First value of an orientation field as an integer when Python would find it equal to one
// (exif_transpose looks the value up in a dict keyed 2..8; 6, 6.0 and 6/1 all hash alike). 0 otherwise.
int field_value(const TiffReader& r, uint32_t type, size_t at) {
  auto as_int = [](double v) {
    return (std::isfinite(v) && v == std::floor(v) && v >= 0 && v <= 255) ? int(v) : 0;
  };
  switch (type) {
    case 1:
      return r.data[at];
    case 6:
      return as_int(double(int8_t(r.data[at])));
    case 3:
      return int(r.u16(at));
    case 8:
      return as_int(double(int16_t(r.u16(at))));
    case 4:
    case 13:
      return as_int(double(r.u32(at)));
    case 9:
      return as_int(double(int32_t(r.u32(at))));
    case 5:
    case 10: {
      double num = type == 5 ? double(r.u32(at)) : double(int32_t(r.u32(at)));
      double den = type == 5 ? double(r.u32(at + 4)) : double(int32_t(r.u32(at + 4)));
      return den == 0 ? 0 : as_int(num / den);
    }
    case 11: {
      uint32_t bits = r.u32(at);
      float f;
      std::memcpy(&f, &bits, 4);
      return as_int(double(f));
    }
    case 12: {
      uint64_t bits = uint64_t(r.u32(r.big_endian ? at : at + 4)) << 32 | r.u32(r.big_endian ? at + 4 : at);
      double d;
      std::memcpy(&d, &bits, 8);
      return as_int(d);
    }
    default:
      return 0;  // ASCII / UNDEFINED: a str or bytes never equals an int
  }
}

}  // namespace

int exif_orientation(const uint8_t* data, size_t size) {
  if (size >= 6 && std::memcmp(data, "Exif\0\0", 6) == 0) {
    data += 6;
    size -= 6;
  }
  if (size < 8) return 0;
  TiffReader r{data, size, false};
  if (std::memcmp(data, "MM\0*", 4) == 0) {
    r.big_endian = true;
  } else if (std::memcmp(data, "II*\0", 4) != 0) {
    return 0;  // Pillow raises "not a TIFF file" here; an unreadable EXIF block means no orientation for us
  }
  size_t ifd = r.u32(4);
  if (!r.has(ifd, 2)) return 0;
  uint32_t count = r.u16(ifd);
  int orientation = 0;
  // Entries up to the first truncated one count (Pillow warns and keeps what it read); a later
  // duplicate of the tag replaces an earlier one.
  for (uint32_t i = 0; i < count; ++i) {
    size_t entry = ifd + 2 + size_t(i) * 12;
    if (!r.has(entry, 12)) break;
    if (r.u16(entry) != 0x0112) continue;
    uint32_t type = r.u16(entry + 2);
    uint32_t n = r.u32(entry + 4);
    size_t unit = type_size(type);
    if (unit == 0) continue;
    if (n == 0) {
      orientation = 0;
      continue;
    }
    size_t bytes = unit * size_t(n);
    size_t at = entry + 8;
    if (bytes > 4) {
      at = r.u32(entry + 8);
      if (!r.has(at, bytes)) continue;  // Pillow: "Possibly corrupt EXIF data", the tag is skipped
    }
    orientation = field_value(r, type, at);
  }
  return orientation;
}

int xmp_orientation(const std::string& xmp) {
  static const std::string key = "tiff:Orientation";
  for (size_t pos = xmp.find(key); pos != std::string::npos; pos = xmp.find(key, pos + 1)) {
    size_t after = pos + key.size();
    auto digit = [&](size_t i) { return i < xmp.size() && xmp[i] >= '0' && xmp[i] <= '9'; };
    if (after + 1 < xmp.size() && xmp[after] == '=' && xmp[after + 1] == '"' && digit(after + 2))
      return xmp[after + 2] - '0';
    if (after < xmp.size() && xmp[after] == '>' && digit(after + 1)) return xmp[after + 1] - '0';
  }
  return 0;
}

ImageU8 apply_orientation(ImageU8 image, int orientation) {
  if (orientation < 2 || orientation > 8) return image;
  const int w = image.width, h = image.height;
  const bool swap = orientation >= 5;  // TRANSPOSE, ROTATE_270, TRANSVERSE, ROTATE_90 swap the axes
  ImageU8 out;
  out.width = swap ? h : w;
  out.height = swap ? w : h;
  out.rgb.resize(image.rgb.size());
  const uint8_t* src = image.rgb.data();
  uint8_t* dst = out.rgb.data();
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      int sx = 0, sy = 0;  // source pixel of output pixel (x, y)
      switch (orientation) {
        case 2:
          sx = w - 1 - x;
          sy = y;
          break;  // FLIP_LEFT_RIGHT
        case 3:
          sx = w - 1 - x;
          sy = h - 1 - y;
          break;  // ROTATE_180
        case 4:
          sx = x;
          sy = h - 1 - y;
          break;  // FLIP_TOP_BOTTOM
        case 5:
          sx = y;
          sy = x;
          break;  // TRANSPOSE
        case 6:
          sx = y;
          sy = h - 1 - x;
          break;  // ROTATE_270 (90 degrees clockwise)
        case 7:
          sx = w - 1 - y;
          sy = h - 1 - x;
          break;  // TRANSVERSE
        case 8:
          sx = w - 1 - y;
          sy = x;
          break;  // ROTATE_90 (90 degrees counter-clockwise)
      }
      const uint8_t* s = src + (size_t(sy) * w + sx) * 3;
      uint8_t* d = dst + (size_t(y) * out.width + x) * 3;
      d[0] = s[0];
      d[1] = s[1];
      d[2] = s[2];
    }
  }
  return out;
}

}  // namespace perceiver::image_detail
