// JPEG via libjpeg(-turbo) with the settings Pillow's JpegDecode.c uses: library defaults (JDCT_ISLOW,
// fancy upsampling), RGB out for 1 and 3 components, CMYK out for 4 (read as Adobe-inverted "CMYK;I" and
// converted with Pillow's cmyk2rgb). Running out of data before the last scanline is an error, as in
// Pillow without LOAD_TRUNCATED_IMAGES; warnings (corrupt entropy data etc.) are ignored, as Pillow does.
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <new>

#include "image/image_internal.h"

// jpeglib.h needs FILE and size_t declared before it.
#include <jpeglib.h>

namespace perceiver::image_detail {

namespace {

struct ErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

struct Source {
  jpeg_source_mgr pub;
  const uint8_t* data;
  size_t size;
  volatile bool ran_out;  // the library asked for bytes past the end of the file
};

const JOCTET kFakeEoi[2] = {0xFF, JPEG_EOI};

void error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}
void emit_message(j_common_ptr, int) {}
void output_message(j_common_ptr) {}

void init_source(j_decompress_ptr) {}
void term_source(j_decompress_ptr) {}
boolean fill_input_buffer(j_decompress_ptr cinfo) {
  auto* src = reinterpret_cast<Source*>(cinfo->src);
  src->ran_out = true;
  src->pub.next_input_byte = kFakeEoi;
  src->pub.bytes_in_buffer = 2;
  return TRUE;
}
void skip_input_data(j_decompress_ptr cinfo, long num_bytes) {
  auto* src = reinterpret_cast<Source*>(cinfo->src);
  if (num_bytes <= 0) return;
  while (num_bytes > long(src->pub.bytes_in_buffer)) {
    num_bytes -= long(src->pub.bytes_in_buffer);
    fill_input_buffer(cinfo);
  }
  src->pub.next_input_byte += num_bytes;
  src->pub.bytes_in_buffer -= size_t(num_bytes);
}

// Pillow's MULDIV255: (a * b + 127) / 255 without a division.
inline int muldiv255(int a, int b) {
  int tmp = a * b + 128;
  return ((tmp >> 8) + tmp) >> 8;
}

// What the setjmp frame hands back; only trivially destructible state lives in decode_frame.
struct JpegResult {
  enum Status { ok, library_error, truncated, bad_layers, out_of_memory } status = ok;
  int orientation = 0;
};

// Everything between setjmp and the last libjpeg call. `out` lives in the caller's frame.
JpegResult decode_frame(const uint8_t* data, size_t size, const std::string& name,
                        const DecodeOptions& options, ImageU8* out, char* message) {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  Source src;
  JpegResult result;
  JSAMPLE* volatile cmyk_row = nullptr;
  std::memset(&cinfo, 0, sizeof cinfo);
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = error_exit;
  err.pub.emit_message = emit_message;
  err.pub.output_message = output_message;
  err.message[0] = '\0';
  if (setjmp(err.jump)) {
    std::snprintf(message, JMSG_LENGTH_MAX, "%s", err.message);
    jpeg_destroy_decompress(&cinfo);
    delete[] cmyk_row;
    result.status = src.ran_out ? JpegResult::truncated : JpegResult::library_error;
    return result;
  }
  jpeg_create_decompress(&cinfo);
  src.pub.init_source = init_source;
  src.pub.fill_input_buffer = fill_input_buffer;
  src.pub.skip_input_data = skip_input_data;
  src.pub.resync_to_restart = jpeg_resync_to_restart;
  src.pub.term_source = term_source;
  src.pub.next_input_byte = data;
  src.pub.bytes_in_buffer = size;
  src.data = data;
  src.size = size;
  src.ran_out = false;
  cinfo.src = &src.pub;
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);

  jpeg_read_header(&cinfo, TRUE);
  if (src.ran_out) {
    jpeg_destroy_decompress(&cinfo);
    result.status = JpegResult::truncated;
    return result;
  }
  // Pillow keeps the first APP1 segment that starts with "Exif\0".
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length >= 5 && std::memcmp(m->data, "Exif\0", 5) == 0) {
      result.orientation = exif_orientation(m->data, m->data_length);
      break;
    }
  }
  const int components = cinfo.num_components;
  if (components != 1 && components != 3 && components != 4) {
    jpeg_destroy_decompress(&cinfo);
    result.status = JpegResult::bad_layers;
    std::snprintf(message, JMSG_LENGTH_MAX, "cannot handle %d-layer images", components);
    return result;
  }
  try {
    check_declared_size(cinfo.image_width, cinfo.image_height, name, options);  // before any big allocation
  } catch (...) {
    jpeg_destroy_decompress(&cinfo);
    throw;
  }
  cinfo.out_color_space = components == 4 ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(&cinfo);

  const size_t width = cinfo.output_width, height = cinfo.output_height;
  try {
    out->width = int(width);
    out->height = int(height);
    out->rgb.resize(width * height * 3);
    if (components == 4) cmyk_row = new JSAMPLE[width * 4];
  } catch (const std::bad_alloc&) {
    jpeg_destroy_decompress(&cinfo);
    delete[] cmyk_row;
    result.status = JpegResult::out_of_memory;
    return result;
  }
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPLE* row = out->rgb.data() + size_t(cinfo.output_scanline) * width * 3;
    if (components == 4) {
      JSAMPROW rows[1] = {cmyk_row};
      jpeg_read_scanlines(&cinfo, rows, 1);
      for (size_t x = 0; x < width; ++x) {
        // "CMYK;I": the stored values are inverted; then cmyk2rgb.
        const JSAMPLE* p = cmyk_row + x * 4;
        int c = 255 - p[0], m = 255 - p[1], y = 255 - p[2], k = 255 - p[3];
        int nk = 255 - k;
        row[x * 3 + 0] = uint8_t(nk - muldiv255(c, nk));
        row[x * 3 + 1] = uint8_t(nk - muldiv255(m, nk));
        row[x * 3 + 2] = uint8_t(nk - muldiv255(y, nk));
      }
    } else {
      JSAMPROW rows[1] = {row};
      jpeg_read_scanlines(&cinfo, rows, 1);
    }
  }
  const bool truncated = src.ran_out;  // data ran out before the last scanline
  if (!truncated)
    jpeg_finish_decompress(&cinfo);  // a missing EOI after the last scanline is fine (Pillow too)
  jpeg_destroy_decompress(&cinfo);
  delete[] cmyk_row;
  if (truncated) result.status = JpegResult::truncated;
  return result;
}

}  // namespace

Decoded decode_jpeg(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& options) {
  Decoded decoded;
  char message[JMSG_LENGTH_MAX] = "";
  JpegResult r = decode_frame(data, size, name, options, &decoded.image, message);
  switch (r.status) {
    case JpegResult::ok:
      break;
    case JpegResult::truncated:
      fail(name, "image file is truncated");
    case JpegResult::bad_layers:
      fail(name, message);
    case JpegResult::out_of_memory:
      fail(name, "out of memory decoding the image");
    case JpegResult::library_error:
      fail(name, std::string("broken JPEG data: ") + message);
  }
  decoded.orientation = r.orientation;
  return decoded;
}

}  // namespace perceiver::image_detail
