// PNG via libpng, converted as Pillow 9.4's PngImagePlugin + convert("RGB") would: palettes looked up (tRNS
// and alpha dropped, no compositing), 1/2/4-bit gray scaled to 0..255 by bit replication, 16-bit RGB(A) and
// gray+alpha reduced to their high byte, 16-bit gray (Pillow mode "I") clipped to 0..255.
// EXIF orientation comes from eXIf, else a "Raw profile type exif" text chunk, else XMP's tiff:Orientation.
#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include "image/image_internal.h"

namespace perceiver::image_detail {

namespace {

constexpr png_alloc_size_t kMaxChunkBytes = 64u << 20;

struct ReadState {
  const uint8_t* data;
  size_t size;
  size_t pos;
  volatile bool ran_out;
  std::jmp_buf jump;
  char message[256];
  uint8_t colors[256 * 3];  // palette lookup table
};

void read_data(png_structp png, png_bytep out, size_t n) {
  auto* s = static_cast<ReadState*>(png_get_io_ptr(png));
  if (n > s->size - s->pos) {
    s->ran_out = true;
    png_error(png, "image file is truncated");
  }
  std::memcpy(out, s->data + s->pos, n);
  s->pos += n;
}

void on_error(png_structp png, png_const_charp message) {
  auto* s = static_cast<ReadState*>(png_get_error_ptr(png));
  std::snprintf(s->message, sizeof s->message, "%s", message);
  std::longjmp(s->jump, 1);
}
void on_warning(png_structp, png_const_charp) {}

uint32_t be32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}

// Python's bytes.fromhex on the lines after the third of an ImageMagick "Raw profile type exif" text.
bool raw_profile_bytes(const char* text, size_t length, std::vector<uint8_t>* out) {
  size_t pos = 0;
  for (int newlines = 0; newlines < 3; ++newlines) {
    while (pos < length && text[pos] != '\n') ++pos;
    if (pos == length) return false;
    ++pos;
  }
  auto nibble = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; };
  for (; pos < length; ++pos) {
    char c = text[pos];
    if (c == '\n' || space(c)) continue;  // the newlines are joined away; fromhex skips whitespace
    int hi = nibble(c);
    size_t next = pos + 1;
    while (next < length && text[next] == '\n') ++next;  // a byte may straddle a joined line break
    if (hi < 0 || next >= length || nibble(text[next]) < 0) return false;
    out->push_back(uint8_t(hi * 16 + nibble(text[next])));
    pos = next;
  }
  return true;
}

struct PngResult {
  enum Status { ok, library_error, truncated, out_of_memory } status = ok;
  int orientation = 0;
};

// The setjmp frame: only trivially destructible locals; the buffers live in the caller.
PngResult decode_frame(ReadState* state, ImageU8* out, std::vector<uint8_t>* pixels,
                       std::vector<png_bytep>* rows, std::vector<uint8_t>* exif_scratch) {
  PngResult result;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, state, on_error, on_warning);
  if (!png) {
    result.status = PngResult::out_of_memory;
    return result;
  }
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    result.status = PngResult::out_of_memory;
    return result;
  }
  volatile int stage = 0;  // 0 header, 1 pixels, 2 after the pixels (Pillow ignores trouble there)
  volatile bool gray16 = false;
  volatile bool palette = false;
  uint8_t* const colors = state->colors;
  volatile int channels = 0;
  if (setjmp(state->jump)) {
    if (stage != 2) {
      png_destroy_read_struct(&png, &info, nullptr);
      result.status = state->ran_out ? PngResult::truncated : PngResult::library_error;
      return result;
    }
  } else {
    png_set_read_fn(png, state, read_data);
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);  // the size limit is Pillow's, checked by the caller
    // Ancillary chunks (text, eXIf, iCCP) are buffered whole, at the length they declare: bounded, so that a
    // small file cannot make libpng allocate up to 2 GiB (an oversized chunk is skipped as a benign error).
    png_set_chunk_malloc_max(png, kMaxChunkBytes);
    // Pillow verifies the CRC of every chunk before the first IDAT, and none after.
    png_set_crc_action(png, PNG_CRC_DEFAULT, PNG_CRC_ERROR_QUIT);
    png_read_info(png, info);
    png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);

    png_uint_32 width = 0, height = 0;
    int bit_depth = 0, color_type = 0, interlace = 0;
    png_get_IHDR(png, info, &width, &height, &bit_depth, &color_type, &interlace, nullptr, nullptr);
    palette = color_type == PNG_COLOR_TYPE_PALETTE;
    if (palette) {
      // Indices, one per byte; mapped below through a 256-entry table. Pillow 9.4's palettes start as a
      // gray ramp, so an index past the PLTE entries reads as (i, i, i) (black only from Pillow 10.1 on).
      png_set_packing(png);
      for (int i = 0; i < 256; ++i) colors[3 * i] = colors[3 * i + 1] = colors[3 * i + 2] = uint8_t(i);
      png_colorp entries = nullptr;
      int count = 0;
      if (png_get_PLTE(png, info, &entries, &count) && entries) {
        for (int i = 0; i < count && i < 256; ++i) {
          colors[3 * i] = entries[i].red;
          colors[3 * i + 1] = entries[i].green;
          colors[3 * i + 2] = entries[i].blue;
        }
      }
    }
    if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    gray16 = color_type == PNG_COLOR_TYPE_GRAY && bit_depth == 16;
    if (bit_depth == 16 && !gray16) png_set_strip_16(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    channels = png_get_channels(png, info);
    const size_t row_bytes = png_get_rowbytes(png, info);
    if (channels < 1 || channels > 4 || row_bytes < size_t(width) * channels * (gray16 ? 2 : 1))
      png_error(png, "unexpected pixel layout");
    try {
      pixels->resize(row_bytes * height);
      rows->resize(height);
      for (png_uint_32 y = 0; y < height; ++y) (*rows)[y] = pixels->data() + row_bytes * y;
      out->width = int(width);
      out->height = int(height);
      out->rgb.resize(size_t(width) * height * 3);
    } catch (const std::bad_alloc&) {
      png_destroy_read_struct(&png, &info, nullptr);
      result.status = PngResult::out_of_memory;
      return result;
    }
    stage = 1;
    png_read_image(png, rows->data());
    stage = 2;
    png_read_end(png, info);  // text and eXIf chunks after IDAT count too
  }

  // Pixels -> RGB.
  const size_t width = size_t(out->width), height = size_t(out->height);
  const size_t row_bytes = height ? pixels->size() / height : 0;
  for (size_t y = 0; y < height; ++y) {
    const uint8_t* s = pixels->data() + row_bytes * y;
    uint8_t* d = out->rgb.data() + width * 3 * y;
    if (gray16) {
      for (size_t x = 0; x < width; ++x) {
        unsigned v = unsigned(s[2 * x]) << 8 | s[2 * x + 1];
        d[3 * x] = d[3 * x + 1] = d[3 * x + 2] = uint8_t(v >= 255 ? 255 : v);
      }
    } else if (palette) {
      for (size_t x = 0; x < width; ++x) std::memcpy(d + 3 * x, colors + 3 * size_t(s[x]), 3);
    } else if (channels <= 2) {
      for (size_t x = 0; x < width; ++x) d[3 * x] = d[3 * x + 1] = d[3 * x + 2] = s[x * channels];
    } else if (channels == 3) {
      std::memcpy(d, s, width * 3);
    } else {
      for (size_t x = 0; x < width; ++x) {
        d[3 * x] = s[4 * x];
        d[3 * x + 1] = s[4 * x + 1];
        d[3 * x + 2] = s[4 * x + 2];
      }
    }
  }

  // Orientation, in Pillow's order of preference.
  png_uint_32 exif_length = 0;
  png_bytep exif = nullptr;
  bool have_exif = png_get_eXIf_1(png, info, &exif_length, &exif) != 0 && exif;
  png_textp text = nullptr;
  int num_text = 0;
  png_get_text(png, info, &text, &num_text);
  const png_text* raw_profile = nullptr;
  const png_text* xmp = nullptr;
  for (int i = 0; i < num_text; ++i) {  // a later chunk with the same keyword replaces an earlier one
    if (std::strcmp(text[i].key, "Raw profile type exif") == 0) raw_profile = &text[i];
    if (std::strcmp(text[i].key, "XML:com.adobe.xmp") == 0) xmp = &text[i];
  }
  if (have_exif) {
    result.orientation = exif_orientation(exif, exif_length);
  } else if (raw_profile) {
    const size_t length = raw_profile->compression >= PNG_ITXT_COMPRESSION_NONE ? raw_profile->itxt_length
                                                                                : raw_profile->text_length;
    try {
      if (raw_profile_bytes(raw_profile->text, length, exif_scratch))
        result.orientation = exif_orientation(exif_scratch->data(), exif_scratch->size());
    } catch (const std::bad_alloc&) {
    }
  }
  if (result.orientation == 0 && xmp && xmp->text) {
    const size_t length = xmp->compression >= PNG_ITXT_COMPRESSION_NONE ? xmp->itxt_length : xmp->text_length;
    try {
      result.orientation = xmp_orientation(std::string(xmp->text, length));
    } catch (const std::bad_alloc&) {
    }
  }
  png_destroy_read_struct(&png, &info, nullptr);
  return result;
}

// libpng buffers an ancillary chunk whole, allocating its declared length before reading it (a length over
// the chunk limit is only a benign error): a 100-byte file could make it allocate 2 GiB. A chunk whose
// declared extent runs past the end of the file can only end in running out of data; libpng is handed the
// bytes before it, and runs out there instead, with the same outcome and without the allocation. (IDAT is
// streamed.)
size_t usable_prefix(const uint8_t* data, size_t size) {
  if (size < 8) return size;
  for (size_t pos = 8; size - pos >= 8;) {
    const uint32_t length = be32(data + pos);
    if (length > 0x7fffffffu) break;  // refused by libpng when it reads the chunk header
    const bool idat = std::memcmp(data + pos + 4, "IDAT", 4) == 0;
    if (uint64_t(length) + 12 > size - pos) return idat ? size : pos;
    if (std::memcmp(data + pos + 4, "IEND", 4) == 0) break;
    pos += 12 + size_t(length);
  }
  return size;
}

}  // namespace

Decoded decode_png(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& options) {
  // Pillow checks the declared size (IHDR, the first chunk) at open time, before reading any pixels.
  if (size >= 24 && std::memcmp(data + 12, "IHDR", 4) == 0)
    check_declared_size(be32(data + 16), be32(data + 20), name, options);
  ReadState state{};
  state.data = data;
  state.size = usable_prefix(data, size);
  state.pos = 0;
  state.ran_out = false;
  Decoded decoded;
  std::vector<uint8_t> pixels, exif_scratch;
  std::vector<png_bytep> rows;
  PngResult r = decode_frame(&state, &decoded.image, &pixels, &rows, &exif_scratch);
  switch (r.status) {
    case PngResult::ok:
      break;
    case PngResult::truncated:
      fail(name, "image file is truncated");
    case PngResult::out_of_memory:
      fail(name, "out of memory decoding the image");
    case PngResult::library_error:
      fail(name, std::string("broken PNG file: ") + state.message);
  }
  decoded.orientation = r.orientation;
  return decoded;
}

}  // namespace perceiver::image_detail
