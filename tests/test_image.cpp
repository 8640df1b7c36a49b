// Image decoding, resizing and PerceiverImageProcessor preprocessing against Pillow/HF references.
#include <gtest/gtest.h>
#include <png.h>
#include <webp/decode.h>
#include <webp/encode.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "idx_dataset.h"
#include "image/image.h"
#include "image/preprocess.h"
#include "perceiver/error.h"
#include "test_util.h"

// jpeglib.h needs FILE and size_t declared before it.
#include <jpeglib.h>

namespace perceiver {
namespace {

using Bytes = std::vector<uint8_t>;
namespace fs = std::filesystem;

fs::path preprocess_dir() { return test::vectors_dir() / "preprocess"; }
fs::path fashion_dir() { return test::shared_dir() / "models" / "fashion-mnist-conv"; }
const fs::path kFashionData = "/usr/share/datasets/fashion-mnist";

Bytes read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

fs::path write_bytes(const std::string& file_name, const Bytes& bytes) {
  static const fs::path dir = test::temp_dir("image");
  fs::path path = dir / file_name;
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  return path;
}

ImageU8 make_image(int w, int h, const std::function<std::array<uint8_t, 3>(int, int)>& pixel) {
  ImageU8 im{w, h, Bytes(size_t(w) * h * 3)};
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      auto p = pixel(x, y);
      std::copy(p.begin(), p.end(), &im.rgb[(size_t(y) * w + x) * 3]);
    }
  return im;
}

::testing::AssertionResult SameImage(const ImageU8& got, const ImageU8& want) {
  if (got.width != want.width || got.height != want.height)
    return ::testing::AssertionFailure()
           << "size " << got.width << "x" << got.height << " != " << want.width << "x" << want.height;
  for (size_t i = 0; i < want.rgb.size(); ++i)
    if (got.rgb[i] != want.rgb[i]) {
      size_t p = i / 3;
      return ::testing::AssertionFailure()
             << "pixel (" << p % want.width << ", " << p / want.width << ") channel " << i % 3 << ": "
             << int(got.rgb[i]) << " != " << int(want.rgb[i]);
    }
  return ::testing::AssertionSuccess();
}

// Expects perceiver::Error of kind bad_input whose message names the file.
void ExpectBadInput(const std::function<void()>& fn, const std::string& file,
                    const std::string& needle = "") {
  try {
    fn();
    ADD_FAILURE() << "no error for " << file;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::bad_input) << e.what();
    EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
    if (!needle.empty()) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
}

void ExpectModelError(const std::string& json, const std::string& needle = "") {
  try {
    parse_preprocessor_config(json, "cfg.json");
    ADD_FAILURE() << "no error for " << json;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::model) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("cfg.json: ", 0), 0u) << e.what();
    if (!needle.empty()) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
}

// Minimal .npy reader for the '<f4' C-order vectors.
std::vector<float> read_npy_f32(const fs::path& path, std::vector<int64_t>* shape) {
  Bytes b = read_bytes(path);
  EXPECT_GE(b.size(), 10u);
  const size_t header_len =
      b[6] == 1 ? size_t(b[8] | b[9] << 8) : size_t(b[8] | b[9] << 8 | b[10] << 16 | b[11] << 24);
  const size_t start = b[6] == 1 ? 10 : 12;
  std::string header(b.begin() + start, b.begin() + start + header_len);
  EXPECT_NE(header.find("'<f4'"), std::string::npos) << header;
  EXPECT_NE(header.find("'fortran_order': False"), std::string::npos) << header;
  std::smatch m;
  std::string dims = std::regex_search(header, m, std::regex(R"(\(([^)]*)\))")) ? m[1].str() : "";
  shape->clear();
  const std::regex number(R"(\d+)");
  for (std::sregex_iterator it(dims.begin(), dims.end(), number), end; it != end; ++it)
    shape->push_back(std::stoll(it->str()));
  std::vector<float> data((b.size() - start - header_len) / 4);
  std::memcpy(data.data(), b.data() + start + header_len, data.size() * 4);
  return data;
}

// ---------------------------------------------------------------------------------------------------------
// Encoders for synthetic test images (libjpeg / libpng / libwebp).

Bytes encode_jpeg(const uint8_t* pixels, int w, int h, int components, J_COLOR_SPACE in_space, int quality,
                  J_COLOR_SPACE jpeg_space) {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  unsigned char* out = nullptr;
  unsigned long out_size = 0;
  jpeg_mem_dest(&cinfo, &out, &out_size);
  cinfo.image_width = w;
  cinfo.image_height = h;
  cinfo.input_components = components;
  cinfo.in_color_space = in_space;
  jpeg_set_defaults(&cinfo);
  jpeg_set_colorspace(&cinfo, jpeg_space);
  jpeg_set_quality(&cinfo, quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<uint8_t*>(pixels) + size_t(cinfo.next_scanline) * w * components;
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  Bytes result(out, out + out_size);
  free(out);
  return result;
}

Bytes encode_jpeg_rgb(const ImageU8& im, int quality = 90) {
  return encode_jpeg(im.rgb.data(), im.width, im.height, 3, JCS_RGB, quality, JCS_YCbCr);
}

// Raw libjpeg decode (no Pillow conventions) of a CMYK/YCCK JPEG to its CMYK samples.
Bytes decode_jpeg_cmyk_raw(const Bytes& jpeg, int* w, int* h) {
  jpeg_decompress_struct cinfo;
  jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, jpeg.data(), jpeg.size());
  jpeg_read_header(&cinfo, TRUE);
  cinfo.out_color_space = JCS_CMYK;
  jpeg_start_decompress(&cinfo);
  *w = int(cinfo.output_width);
  *h = int(cinfo.output_height);
  Bytes out(size_t(*w) * *h * 4);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out.data() + size_t(cinfo.output_scanline) * *w * 4;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return out;
}

void put16(Bytes* b, unsigned v, bool be) {
  if (be) {
    b->push_back(uint8_t(v >> 8));
    b->push_back(uint8_t(v));
  } else {
    b->push_back(uint8_t(v));
    b->push_back(uint8_t(v >> 8));
  }
}
void put32(Bytes* b, uint32_t v, bool be) {
  put16(b, be ? v >> 16 : v & 0xFFFF, be);
  put16(b, be ? v & 0xFFFF : v >> 16, be);
}

// A TIFF block (no "Exif\0\0" prefix) whose IFD0 holds ImageWidth and Orientation (SHORT, or LONG).
Bytes make_tiff(int orientation, bool big_endian, bool as_long = false) {
  Bytes t = big_endian ? Bytes{'M', 'M', 0, '*'} : Bytes{'I', 'I', '*', 0};
  put32(&t, 8, big_endian);       // IFD0 offset
  put16(&t, 2, big_endian);       // entries
  put16(&t, 0x0100, big_endian);  // ImageWidth LONG 1 = 7
  put16(&t, 4, big_endian);
  put32(&t, 1, big_endian);
  put32(&t, 7, big_endian);
  put16(&t, 0x0112, big_endian);  // Orientation
  put16(&t, as_long ? 4 : 3, big_endian);
  put32(&t, 1, big_endian);
  if (as_long) {
    put32(&t, uint32_t(orientation), big_endian);
  } else {
    put16(&t, unsigned(orientation), big_endian);
    put16(&t, 0, big_endian);
  }
  put32(&t, 0, big_endian);  // no IFD1
  return t;
}

Bytes exif_segment(int orientation, bool big_endian, bool as_long = false) {
  Bytes e = {'E', 'x', 'i', 'f', 0, 0};
  Bytes t = make_tiff(orientation, big_endian, as_long);
  e.insert(e.end(), t.begin(), t.end());
  return e;
}

// Inserts an APPn segment right after SOI.
Bytes insert_app(const Bytes& jpeg, int n, const Bytes& payload) {
  Bytes out(jpeg.begin(), jpeg.begin() + 2);
  out.push_back(0xFF);
  out.push_back(uint8_t(0xE0 + n));
  put16(&out, unsigned(payload.size() + 2), true);
  out.insert(out.end(), payload.begin(), payload.end());
  out.insert(out.end(), jpeg.begin() + 2, jpeg.end());
  return out;
}

struct PngSpec {
  int width = 0, height = 0, color_type = PNG_COLOR_TYPE_RGB, bit_depth = 8;
  bool interlaced = false;
  Bytes rows;  // packed PNG rows, big-endian samples
  std::vector<png_color> palette;
  Bytes trns;
  Bytes exif;                                              // eXIf chunk payload
  std::vector<std::pair<std::string, std::string>> texts;  // tEXt / iTXt (XML:com.adobe.xmp)
};

Bytes encode_png(const PngSpec& s) {
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  Bytes out;
  png_set_write_fn(
      png, &out,
      [](png_structp p, png_bytep data, size_t n) {
        auto* o = static_cast<Bytes*>(png_get_io_ptr(p));
        o->insert(o->end(), data, data + n);
      },
      nullptr);
  png_set_check_for_invalid_index(png, 0);  // allow indices past the palette (a test case)
  png_set_IHDR(png, info, s.width, s.height, s.bit_depth, s.color_type,
               s.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!s.palette.empty()) png_set_PLTE(png, info, s.palette.data(), int(s.palette.size()));
  if (!s.trns.empty()) png_set_tRNS(png, info, s.trns.data(), int(s.trns.size()), nullptr);
  if (!s.exif.empty())
    png_set_eXIf_1(png, info, png_uint_32(s.exif.size()), const_cast<png_bytep>(s.exif.data()));
  std::vector<png_text> texts(s.texts.size());
  for (size_t i = 0; i < s.texts.size(); ++i) {
    std::memset(&texts[i], 0, sizeof(png_text));
    texts[i].key = const_cast<char*>(s.texts[i].first.c_str());
    texts[i].text = const_cast<char*>(s.texts[i].second.c_str());
    texts[i].compression =
        s.texts[i].first == "XML:com.adobe.xmp" ? PNG_ITXT_COMPRESSION_NONE : PNG_TEXT_COMPRESSION_zTXt;
  }
  if (!texts.empty()) png_set_text(png, info, texts.data(), int(texts.size()));
  png_write_info(png, info);
  const size_t row_bytes = s.rows.size() / s.height;
  std::vector<png_bytep> rows(s.height);
  for (int y = 0; y < s.height; ++y) rows[y] = const_cast<png_bytep>(s.rows.data()) + row_bytes * y;
  png_write_image(png, rows.data());
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return out;
}

uint32_t crc32_of(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
  }
  return ~c;
}

// The geometric transforms of PIL.Image.transpose, composed from flips and a transpose.
ImageU8 flip_lr(const ImageU8& a) {
  return make_image(a.width, a.height, [&](int x, int y) {
    const uint8_t* p = &a.rgb[(size_t(y) * a.width + (a.width - 1 - x)) * 3];
    return std::array<uint8_t, 3>{p[0], p[1], p[2]};
  });
}
ImageU8 flip_tb(const ImageU8& a) {
  return make_image(a.width, a.height, [&](int x, int y) {
    const uint8_t* p = &a.rgb[(size_t(a.height - 1 - y) * a.width + x) * 3];
    return std::array<uint8_t, 3>{p[0], p[1], p[2]};
  });
}
ImageU8 transpose(const ImageU8& a) {
  return make_image(a.height, a.width, [&](int x, int y) {
    const uint8_t* p = &a.rgb[(size_t(x) * a.width + y) * 3];
    return std::array<uint8_t, 3>{p[0], p[1], p[2]};
  });
}
ImageU8 exif_transposed(const ImageU8& a, int orientation) {
  switch (orientation) {
    case 2:
      return flip_lr(a);
    case 3:
      return flip_tb(flip_lr(a));
    case 4:
      return flip_tb(a);
    case 5:
      return transpose(a);
    case 6:
      return flip_lr(transpose(a));  // ROTATE_270
    case 7:
      return flip_tb(flip_lr(transpose(a)));  // TRANSVERSE
    case 8:
      return flip_tb(transpose(a));  // ROTATE_90
    default:
      return a;
  }
}

ImageU8 asymmetric_image(int w, int h) {
  return make_image(w, h, [](int x, int y) {
    return std::array<uint8_t, 3>{uint8_t(x * 40), uint8_t(y * 60), uint8_t((x * 7 + y * 13) * 5)};
  });
}

// ---------------------------------------------------------------------------------------------------------
// Golden vectors: Pillow 9.4 + HF PerceiverImageProcessor.

struct VectorCase {
  std::string source;
  nlohmann::json json;
};

std::vector<VectorCase> vector_cases() {
  std::ifstream in(preprocess_dir() / "manifest.json");
  nlohmann::json manifest = nlohmann::json::parse(in);
  std::vector<VectorCase> cases;
  for (const auto& c : manifest["cases"]) cases.push_back({c["source"].get<std::string>(), c});
  return cases;
}

TEST(ImageVectors, JpegDecodeMatchesPillowPixels) {
  int checked = 0;
  for (const auto& c : vector_cases()) {
    SCOPED_TRACE(c.source);
    ImageU8 im = load_image(preprocess_dir() / c.source);
    EXPECT_EQ(im.height, c.json["after_load_image_hw"][0].get<int>());
    EXPECT_EQ(im.width, c.json["after_load_image_hw"][1].get<int>());
    if (!c.json.contains("decoded_rgb_png")) continue;
    ImageU8 want = load_image(preprocess_dir() / c.json["decoded_rgb_png"].get<std::string>());
    EXPECT_TRUE(SameImage(im, want));
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

TEST(ImageVectors, ResizeAndPixelValuesMatchHuggingFace) {
  const PreprocessorConfig config = load_preprocessor_config(preprocess_dir() / "preprocessor_config.json");
  const float mean[3] = {0.485f, 0.456f, 0.406f}, stdv[3] = {0.229f, 0.224f, 0.225f};
  for (const auto& c : vector_cases()) {
    SCOPED_TRACE(c.source);
    ImageU8 im = load_image(preprocess_dir() / c.source);
    std::vector<int64_t> shape;
    std::vector<float> want =
        read_npy_f32(preprocess_dir() / c.json["pixel_values"].get<std::string>(), &shape);
    ASSERT_EQ(shape, (std::vector<int64_t>{1, 3, 224, 224}));

    // The manifest's crop follows the rule; crop it here and resize with resize_like_pillow.
    const auto& crop = c.json["center_crop"];
    const int side = int(224.0 / 256.0 * std::min(im.height, im.width));
    const int top = crop["top"], left = crop["left"];
    ASSERT_EQ(crop["height"].get<int>(), side);
    ASSERT_EQ(top, (im.height - side) / 2);
    ASSERT_EQ(left, (im.width - side) / 2);
    ImageU8 cropped = make_image(side, side, [&](int x, int y) {
      const uint8_t* p = &im.rgb[(size_t(top + y) * im.width + left + x) * 3];
      return std::array<uint8_t, 3>{p[0], p[1], p[2]};
    });
    ImageU8 resized = resize_like_pillow(cropped, 224, 224, Resample::bicubic);
    int mismatches = 0;
    for (int ch = 0; ch < 3; ++ch)
      for (int i = 0; i < 224 * 224; ++i) {
        const float pv = want[size_t(ch) * 224 * 224 + i];
        const float u8 = std::rint((pv * stdv[ch] + mean[ch]) * 255.0f);
        if (u8 != float(resized.rgb[size_t(i) * 3 + ch])) ++mismatches;
      }
    EXPECT_EQ(mismatches, 0);

    int h = 0, w = 0;
    preprocessed_size(config, im, &h, &w);
    ASSERT_EQ(h, 224);
    ASSERT_EQ(w, 224);
    std::vector<float> got(3 * 224 * 224);
    preprocess(im, config, got.data());
    double max_err = 0;
    size_t exact = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      max_err = std::max(max_err, std::fabs(double(got[i]) - double(want[i])));
      exact += got[i] == want[i];
    }
    EXPECT_LE(max_err, 1e-6);
    EXPECT_EQ(exact, got.size()) << "values not bit-identical";
  }
}

// ---------------------------------------------------------------------------------------------------------
// Fashion-MNIST: PNGs, IDX files.

struct FashionPng {
  fs::path path;
  int index;
  int label;
};

std::vector<FashionPng> fashion_pngs() {
  std::vector<FashionPng> files;
  for (const auto& e : fs::directory_iterator(fashion_dir() / "expected" / "images")) {
    const std::string name = e.path().filename().string();
    files.push_back({e.path(), std::stoi(name.substr(0, 5)), std::stoi(name.substr(6, 1))});
  }
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
  return files;
}

TEST(ImageFashionMnist, PngsDecodeGrayAndPreprocessTo3x56x56) {
  const PreprocessorConfig config = load_preprocessor_config(fashion_dir() / "preprocessor_config.json");
  EXPECT_FALSE(config.do_center_crop);
  EXPECT_EQ(config.height, 56);
  EXPECT_EQ(config.width, 56);
  const auto files = fashion_pngs();
  ASSERT_EQ(files.size(), 16u);
  for (const auto& f : files) {
    SCOPED_TRACE(f.path.string());
    ImageU8 im = load_image(f.path);
    ASSERT_EQ(im.width, 28);
    ASSERT_EQ(im.height, 28);
    for (size_t p = 0; p < 28 * 28; ++p) {
      ASSERT_EQ(im.rgb[3 * p], im.rgb[3 * p + 1]);
      ASSERT_EQ(im.rgb[3 * p], im.rgb[3 * p + 2]);
    }
    int h = 0, w = 0;
    preprocessed_size(config, im, &h, &w);
    ASSERT_EQ(h, 56);
    ASSERT_EQ(w, 56);
    std::vector<float> px(3 * 56 * 56);
    preprocess(im, config, px.data());
    for (int i = 0; i < 56 * 56; ++i) {  // same mean/std in every channel -> equal planes
      ASSERT_EQ(px[i], px[56 * 56 + i]);
      ASSERT_EQ(px[i], px[2 * 56 * 56 + i]);
    }
    const auto [lo, hi] = std::minmax_element(px.begin(), px.end());
    EXPECT_GE(*lo, (0.0f - 0.286f) / 0.353f - 1e-6f);
    EXPECT_LE(*hi, (1.0f - 0.286f) / 0.353f + 1e-6f);
  }
}

TEST(ImageFashionMnist, IdxTestSetMatchesPngs) {
  IdxImages images = read_idx_images(kFashionData / "t10k-images-idx3-ubyte.gz");
  EXPECT_EQ(images.count, 10000);
  EXPECT_EQ(images.rows, 28);
  EXPECT_EQ(images.cols, 28);
  ASSERT_EQ(images.pixels.size(), 10000u * 28 * 28);
  std::vector<uint8_t> labels = read_idx_labels(kFashionData / "t10k-labels-idx1-ubyte.gz");
  ASSERT_EQ(labels.size(), 10000u);
  EXPECT_LE(*std::max_element(labels.begin(), labels.end()), 9);
  std::array<int, 10> per_class{};
  for (uint8_t l : labels) ++per_class[l];
  for (int n : per_class) EXPECT_EQ(n, 1000);

  const PreprocessorConfig config = load_preprocessor_config(fashion_dir() / "preprocessor_config.json");
  for (const auto& f : fashion_pngs()) {
    SCOPED_TRACE(f.path.string());
    ImageU8 png = load_image(f.path);
    ImageU8 idx = idx_image_rgb(images, f.index);
    EXPECT_TRUE(SameImage(png, idx));  // index 0 is 00000_9_ankle_boot.png
    EXPECT_EQ(labels[f.index], f.label);
    std::vector<float> a(3 * 56 * 56), b(3 * 56 * 56);
    preprocess(png, config, a.data());
    preprocess(idx, config, b.data());
    EXPECT_EQ(a, b);
  }
  ExpectBadInput([&] { idx_image_rgb(images, 10000); }, "10000");
}

TEST(ImageIdx, StrictHeaderChecks) {
  auto idx = [](std::vector<uint8_t> header, size_t data_bytes) {
    header.resize(header.size() + data_bytes, 7);
    return header;
  };
  // Valid tiny files: plain and gzip'd (gzread reads both).
  auto ok = write_bytes("ok.idx", idx({0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4}, 24));
  IdxImages im = read_idx_images(ok);
  EXPECT_EQ(im.count, 2);
  EXPECT_EQ(im.rows, 3);
  EXPECT_EQ(im.cols, 4);
  EXPECT_EQ(im.pixels, Bytes(24, 7));
  EXPECT_EQ(read_idx_labels(write_bytes("labels.idx", idx({0, 0, 8, 1, 0, 0, 0, 5}, 5))), Bytes(5, 7));

  struct Bad {
    const char* file;
    Bytes bytes;
    const char* needle;
  };
  const std::vector<Bad> bad = {
      {"magic.idx", idx({1, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1}, 1), "magic"},
      {"type.idx", idx({0, 0, 9, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1}, 1), "type"},
      {"rank.idx", idx({0, 0, 8, 1, 0, 0, 0, 1}, 1), "dimensions"},
      {"zero_dim.idx", idx({0, 0, 8, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1}, 0), "is 0"},
      {"short_data.idx", idx({0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2}, 7), "truncated"},
      {"extra_data.idx", idx({0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2}, 9), "after"},
      {"short_header.idx", {0, 0, 8, 3, 0, 0}, "header"},
      {"huge.idx", idx({0, 0, 8, 3, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 1}, 0), "large"},
      {"empty.idx", {}, "short"},
  };
  for (const auto& b : bad) {
    SCOPED_TRACE(b.file);
    auto path = write_bytes(b.file, b.bytes);
    ExpectBadInput([&] { read_idx_images(path); }, b.file, b.needle);
  }
  // A gzip stream cut short.
  Bytes gz = read_bytes(kFashionData / "t10k-labels-idx1-ubyte.gz");
  gz.resize(gz.size() / 2);
  auto cut = write_bytes("cut.idx.gz", gz);
  ExpectBadInput([&] { read_idx_labels(cut); }, "cut.idx.gz");
  ExpectBadInput([&] { read_idx_labels("/nonexistent/labels.gz"); }, "/nonexistent/labels.gz");
}

// ---------------------------------------------------------------------------------------------------------
// Refusals.

TEST(ImageErrors, RefusesBrokenFilesNamingThem) {
  Bytes cat = read_bytes(preprocess_dir() / "cat_chelsea_451x300.jpg");
  ASSERT_GT(cat.size(), 1000u);

  Bytes half(cat.begin(), cat.begin() + cat.size() / 2);
  auto truncated = write_bytes("truncated.jpg", half);
  ExpectBadInput([&] { load_image(truncated); }, "truncated.jpg", "truncated");

  Bytes no_scan(cat.begin(), cat.begin() + 300);  // cut inside the header segments
  auto cut_header = write_bytes("cut_header.jpg", no_scan);
  ExpectBadInput([&] { load_image(cut_header); }, "cut_header.jpg");

  Bytes garbage(1000);
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = uint8_t(i * 37 + 11);
  auto garbage_path = write_bytes("garbage.bin", garbage);
  ExpectBadInput([&] { load_image(garbage_path); }, "garbage.bin", "cannot identify");

  Bytes jpeg_garbage = {0xFF, 0xD8, 0xFF};  // a JPEG signature, then noise
  jpeg_garbage.insert(jpeg_garbage.end(), garbage.begin(), garbage.end());
  auto jpeg_garbage_path = write_bytes("noise.jpg", jpeg_garbage);
  ExpectBadInput([&] { load_image(jpeg_garbage_path); }, "noise.jpg");

  auto empty = write_bytes("empty.png", {});
  ExpectBadInput([&] { load_image(empty); }, "empty.png", "empty");

  ExpectBadInput([&] { load_image("/nonexistent/dir/missing.jpg"); }, "/nonexistent/dir/missing.jpg");
  ExpectBadInput([&] { load_image(test::temp_dir("dir-as-image")); }, "dir-as-image");

  // PNG declaring 100000 x 100000 (valid IHDR CRC, no pixel data): refused before anything is allocated.
  Bytes bomb = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  put32(&bomb, 13, true);
  const size_t type_at = bomb.size();
  bomb.insert(bomb.end(), {'I', 'H', 'D', 'R'});
  put32(&bomb, 100000, true);
  put32(&bomb, 100000, true);
  bomb.insert(bomb.end(), {8, 2, 0, 0, 0});
  put32(&bomb, crc32_of(&bomb[type_at], 17), true);
  auto bomb_path = write_bytes("bomb.png", bomb);
  ExpectBadInput([&] { load_image(bomb_path); }, "bomb.png", "decompression bomb");
  // The same limit applies to JPEG (SOF size) and can be changed.
  ImageU8 small = asymmetric_image(40, 30);
  auto small_jpeg = write_bytes("small.jpg", encode_jpeg_rgb(small));
  DecodeOptions tight;
  tight.max_pixels = 500;  // 2 * 500 < 1200 pixels
  ExpectBadInput([&] { load_image(small_jpeg, tight); }, "small.jpg", "decompression bomb");
  tight.max_pixels = 600;
  EXPECT_EQ(load_image(small_jpeg, tight).width, 40);

  // Zero height in IHDR.
  Bytes zero = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  put32(&zero, 13, true);
  zero.insert(zero.end(), {'I', 'H', 'D', 'R'});
  put32(&zero, 5, true);
  put32(&zero, 0, true);
  zero.insert(zero.end(), {8, 2, 0, 0, 0});
  put32(&zero, crc32_of(&zero[12], 17), true);
  auto zero_path = write_bytes("zero.png", zero);
  ExpectBadInput([&] { load_image(zero_path); }, "zero.png");

  // Truncated PNG and WebP.
  Bytes coffee = read_bytes(preprocess_dir() / "coffee_rgba_240x160.png");
  coffee.resize(coffee.size() * 2 / 3);
  auto cut_png = write_bytes("cut.png", coffee);
  ExpectBadInput([&] { load_image(cut_png); }, "cut.png", "truncated");
  uint8_t* webp = nullptr;
  size_t webp_size = WebPEncodeLosslessRGB(small.rgb.data(), 40, 30, 120, &webp);
  ASSERT_GT(webp_size, 40u);
  Bytes webp_cut(webp, webp + webp_size / 2);
  WebPFree(webp);
  auto cut_webp = write_bytes("cut.webp", webp_cut);
  ExpectBadInput([&] { load_image(cut_webp); }, "cut.webp");

  // Errors from memory name the given name.
  ExpectBadInput([&] { load_image_from_memory(half.data(), half.size(), "upload #3"); }, "upload #3");
}

// ---------------------------------------------------------------------------------------------------------
// EXIF orientation.

TEST(ImageExif, JpegAllEightOrientations) {
  const ImageU8 base = asymmetric_image(7, 4);
  const Bytes jpeg = encode_jpeg_rgb(base, 95);
  const ImageU8 plain = load_image_from_memory(jpeg.data(), jpeg.size(), "plain.jpg");
  ASSERT_EQ(plain.width, 7);
  for (bool big_endian : {false, true})
    for (int o = 1; o <= 8; ++o) {
      SCOPED_TRACE("orientation " + std::to_string(o) + (big_endian ? " MM" : " II"));
      Bytes with_exif = insert_app(jpeg, 1, exif_segment(o, big_endian, /*as_long=*/o == 7));
      ImageU8 got = load_image(write_bytes("exif" + std::to_string(o) + ".jpg", with_exif));
      EXPECT_TRUE(SameImage(got, exif_transposed(plain, o)));
    }
  // Not applied: values outside 1..8, a non-Exif APP1, and a second Exif segment (Pillow keeps the first).
  for (int o : {0, 9, 300}) {
    Bytes b = insert_app(jpeg, 1, exif_segment(o, false));
    EXPECT_TRUE(SameImage(load_image_from_memory(b.data(), b.size(), "o.jpg"), plain)) << o;
  }
  Bytes xmp_app1 = {'h', 't', 't', 'p', ':', '/', '/', 'n', 's', '.', 'a', 'd', 'o', 'b', 'e'};
  Bytes b = insert_app(jpeg, 1, xmp_app1);
  EXPECT_TRUE(SameImage(load_image_from_memory(b.data(), b.size(), "x.jpg"), plain));
  Bytes two = insert_app(insert_app(jpeg, 1, exif_segment(3, false)), 1, exif_segment(6, true));
  EXPECT_TRUE(
      SameImage(load_image_from_memory(two.data(), two.size(), "two.jpg"), exif_transposed(plain, 6)));
  // A broken TIFF block is ignored.
  Bytes broken = {'E', 'x', 'i', 'f', 0, 0, 'I', 'I', '*', 0, 0xF0, 0xFF, 0, 0};
  Bytes c = insert_app(jpeg, 1, broken);
  EXPECT_TRUE(SameImage(load_image_from_memory(c.data(), c.size(), "broken.jpg"), plain));
}

TEST(ImageExif, PngAndWebpOrientation) {
  const ImageU8 base = asymmetric_image(5, 3);
  PngSpec spec;
  spec.width = 5;
  spec.height = 3;
  spec.rows = base.rgb;
  const ImageU8 want6 = exif_transposed(base, 6);
  {
    PngSpec s = spec;
    s.exif = make_tiff(6, true);
    Bytes png = encode_png(s);
    EXPECT_TRUE(SameImage(load_image_from_memory(png.data(), png.size(), "exif.png"), want6));
  }
  {
    PngSpec s = spec;  // ImageMagick's zTXt "Raw profile type exif"
    Bytes tiff = make_tiff(8, false);
    std::string hex;
    char buf[3];
    for (size_t i = 0; i < tiff.size(); ++i) {
      std::snprintf(buf, sizeof buf, "%02x", tiff[i]);
      hex += buf;
      if (i % 10 == 9) hex += "\n";
    }
    s.texts = {{"Raw profile type exif", "\nexif\n      " + std::to_string(tiff.size()) + "\n" + hex + "\n"}};
    Bytes png = encode_png(s);
    EXPECT_TRUE(
        SameImage(load_image_from_memory(png.data(), png.size(), "raw.png"), exif_transposed(base, 8)));
  }
  {
    PngSpec s = spec;  // XMP packet in iTXt
    s.texts = {{"XML:com.adobe.xmp", "<x:xmpmeta><rdf:Description tiff:Orientation=\"3\"/></x:xmpmeta>"}};
    Bytes png = encode_png(s);
    EXPECT_TRUE(
        SameImage(load_image_from_memory(png.data(), png.size(), "xmp.png"), exif_transposed(base, 3)));
  }
  {
    // WebP: an extended (VP8X) file with the EXIF flag and an EXIF chunk after the image.
    uint8_t* enc = nullptr;
    size_t n = WebPEncodeLosslessRGB(base.rgb.data(), 5, 3, 15, &enc);
    ASSERT_GT(n, 20u);
    Bytes simple(enc, enc + n);
    WebPFree(enc);
    ImageU8 plain = load_image_from_memory(simple.data(), simple.size(), "plain.webp");
    EXPECT_TRUE(SameImage(plain, base));  // lossless
    Bytes tiff = make_tiff(5, false);
    Bytes file = {'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'E', 'B', 'P', 'V', 'P', '8', 'X'};
    put32(&file, 10, false);
    file.insert(file.end(), {0x08, 0, 0, 0, 4, 0, 0, 2, 0, 0});  // EXIF flag; canvas 5 x 3 (minus one)
    file.insert(file.end(), simple.begin() + 12, simple.end());  // the VP8L chunk
    file.insert(file.end(), {'E', 'X', 'I', 'F'});
    put32(&file, uint32_t(tiff.size()), false);
    file.insert(file.end(), tiff.begin(), tiff.end());
    if (tiff.size() & 1) file.push_back(0);
    const uint32_t riff = uint32_t(file.size() - 8);
    for (int i = 0; i < 4; ++i) file[4 + i] = uint8_t(riff >> (8 * i));
    EXPECT_TRUE(SameImage(load_image_from_memory(file.data(), file.size(), "exif.webp"), transpose(base)));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Pixel formats (Pillow 9.4's modes and convert("RGB")).

TEST(ImagePng, PixelFormatsConvertLikePillow) {
  const int w = 9, h = 5;
  auto check = [&](const char* what, PngSpec s, const std::function<std::array<uint8_t, 3>(int, int)>& want) {
    SCOPED_TRACE(what);
    s.width = w;
    s.height = h;
    for (bool interlaced : {false, true}) {
      s.interlaced = interlaced;
      Bytes png = encode_png(s);
      EXPECT_TRUE(SameImage(load_image_from_memory(png.data(), png.size(), what), make_image(w, h, want)))
          << (interlaced ? "interlaced" : "");
    }
  };
  auto sample = [](int x, int y, int levels) { return (x * 3 + y * 5) % levels; };
  // Gray 1/2/4 bits: 0..2^n-1 scaled to 0..255 (mode "1", "L;2" x85, "L;4" x17).
  for (int bits : {1, 2, 4}) {
    PngSpec s;
    s.color_type = PNG_COLOR_TYPE_GRAY;
    s.bit_depth = bits;
    const int row_bytes = (w * bits + 7) / 8;
    s.rows.assign(size_t(row_bytes) * h, 0);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        int v = sample(x, y, 1 << bits), bit = x * bits;
        s.rows[size_t(y) * row_bytes + bit / 8] |= uint8_t(v << (8 - bits - bit % 8));
      }
    const int scale = 255 / ((1 << bits) - 1);
    check(("gray" + std::to_string(bits)).c_str(), s, [&](int x, int y) {
      uint8_t v = uint8_t(sample(x, y, 1 << bits) * scale);
      return std::array<uint8_t, 3>{v, v, v};
    });
  }
  auto v16 = [&](int x, int y) { return unsigned((x * 7919 + y * 104729) % 65536); };
  {
    PngSpec s;  // 16-bit gray = mode "I": clipped to 255, not the high byte
    s.color_type = PNG_COLOR_TYPE_GRAY;
    s.bit_depth = 16;
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) put16(&s.rows, (x + y) % 3 == 0 ? (x * 40 + y) : v16(x, y), true);
    check("gray16", s, [&](int x, int y) {
      unsigned v = (x + y) % 3 == 0 ? unsigned(x * 40 + y) : v16(x, y);
      uint8_t c = uint8_t(std::min(v, 255u));
      return std::array<uint8_t, 3>{c, c, c};
    });
  }
  {
    PngSpec s;  // 16-bit RGBA: high bytes, alpha dropped
    s.color_type = PNG_COLOR_TYPE_RGB_ALPHA;
    s.bit_depth = 16;
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < 4; ++c) put16(&s.rows, v16(x + c, y), true);
    check("rgba16", s, [&](int x, int y) {
      return std::array<uint8_t, 3>{uint8_t(v16(x, y) >> 8), uint8_t(v16(x + 1, y) >> 8),
                                    uint8_t(v16(x + 2, y) >> 8)};
    });
    s.color_type = PNG_COLOR_TYPE_RGB;
    s.rows.clear();
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < 3; ++c) put16(&s.rows, v16(x + c, y), true);
    check("rgb16", s, [&](int x, int y) {
      return std::array<uint8_t, 3>{uint8_t(v16(x, y) >> 8), uint8_t(v16(x + 1, y) >> 8),
                                    uint8_t(v16(x + 2, y) >> 8)};
    });
    s.color_type = PNG_COLOR_TYPE_GRAY_ALPHA;  // 16-bit LA: high byte of L
    s.rows.clear();
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < 2; ++c) put16(&s.rows, v16(x + c, y), true);
    check("la16", s, [&](int x, int y) {
      uint8_t v = uint8_t(v16(x, y) >> 8);
      return std::array<uint8_t, 3>{v, v, v};
    });
  }
  {
    PngSpec s;  // 8-bit RGBA and LA: alpha dropped without compositing
    s.color_type = PNG_COLOR_TYPE_RGB_ALPHA;
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        s.rows.insert(s.rows.end(), {uint8_t(x * 20), uint8_t(y * 30), 200, uint8_t(x * y)});
    check("rgba8", s, [](int x, int y) {
      return std::array<uint8_t, 3>{uint8_t(x * 20), uint8_t(y * 30), 200};
    });
    s.color_type = PNG_COLOR_TYPE_GRAY_ALPHA;
    s.rows.clear();
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) s.rows.insert(s.rows.end(), {uint8_t(x * 25 + y), 0});
    check("la8", s, [](int x, int y) {
      uint8_t v = uint8_t(x * 25 + y);
      return std::array<uint8_t, 3>{v, v, v};
    });
  }
  for (int bits : {1, 2, 4, 8}) {
    PngSpec s;  // palettes, with tRNS (ignored by convert("RGB"))
    s.color_type = PNG_COLOR_TYPE_PALETTE;
    s.bit_depth = bits;
    const int colors = 1 << bits;
    for (int i = 0; i < colors; ++i)
      s.palette.push_back({uint8_t(i * 37 + 5), uint8_t(255 - i * 11), uint8_t(i * i)});
    s.trns = {0, 128};
    const int row_bytes = (w * bits + 7) / 8;
    s.rows.assign(size_t(row_bytes) * h, 0);
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        int v = sample(x, y, colors), bit = x * bits;
        s.rows[size_t(y) * row_bytes + bit / 8] |= uint8_t(v << (8 - bits - bit % 8));
      }
    check(("palette" + std::to_string(bits)).c_str(), s, [&](int x, int y) {
      const png_color& c = s.palette[sample(x, y, colors)];
      return std::array<uint8_t, 3>{c.red, c.green, c.blue};
    });
  }
  {
    PngSpec s;  // indices past the PLTE entries: Pillow 9.4's palette is a gray ramp there
    s.color_type = PNG_COLOR_TYPE_PALETTE;
    s.palette = {{10, 20, 30}, {40, 50, 60}};
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) s.rows.push_back(uint8_t(x == 0 ? 1 : 100 + x * 10 + y));
    check("short palette", s, [](int x, int y) {
      if (x == 0) return std::array<uint8_t, 3>{40, 50, 60};
      uint8_t v = uint8_t(100 + x * 10 + y);
      return std::array<uint8_t, 3>{v, v, v};
    });
  }
}

TEST(ImageJpeg, GrayscaleAndCmyk) {
  const int w = 16, h = 8;
  Bytes gray(w * h);
  for (int i = 0; i < w * h; ++i) gray[i] = uint8_t(i * 2);
  Bytes g = encode_jpeg(gray.data(), w, h, 1, JCS_GRAYSCALE, 90, JCS_GRAYSCALE);
  ImageU8 im = load_image_from_memory(g.data(), g.size(), "gray.jpg");
  ASSERT_EQ(im.width, w);
  for (int p = 0; p < w * h; ++p) {
    ASSERT_EQ(im.rgb[3 * p], im.rgb[3 * p + 1]);
    ASSERT_EQ(im.rgb[3 * p], im.rgb[3 * p + 2]);
    EXPECT_NEAR(im.rgb[3 * p], gray[p], 6);
  }
  Bytes cmyk(w * h * 4);
  for (int i = 0; i < w * h * 4; ++i) cmyk[i] = uint8_t((i * 53) % 256);
  for (J_COLOR_SPACE space : {JCS_CMYK, JCS_YCCK}) {
    SCOPED_TRACE(space == JCS_CMYK ? "CMYK" : "YCCK");
    Bytes j = encode_jpeg(cmyk.data(), w, h, 4, JCS_CMYK, 95, space);
    int rw = 0, rh = 0;
    Bytes raw = decode_jpeg_cmyk_raw(j, &rw, &rh);
    ImageU8 got = load_image_from_memory(j.data(), j.size(), "cmyk.jpg");
    // Pillow: rawmode "CMYK;I" inverts every sample, then cmyk2rgb: nk = 255 - K; R = nk - C*nk/255
    // (rounded).
    ImageU8 want = make_image(rw, rh, [&](int x, int y) {
      const uint8_t* p = &raw[(size_t(y) * rw + x) * 4];
      const int k = 255 - p[3];
      std::array<uint8_t, 3> rgb;
      for (int c = 0; c < 3; ++c) {
        const int v = 255 - p[c];
        const int t = v * (255 - k) + 128;  // MULDIV255
        rgb[c] = uint8_t((255 - k) - (((t >> 8) + t) >> 8));
      }
      return rgb;
    });
    EXPECT_TRUE(SameImage(got, want));
  }
}

TEST(ImageWebp, LosslessRoundTripAndLossy) {
  const ImageU8 base = asymmetric_image(6, 5);
  uint8_t* enc = nullptr;
  size_t n = WebPEncodeLosslessRGB(base.rgb.data(), 6, 5, 18, &enc);
  Bytes file(enc, enc + n);
  WebPFree(enc);
  EXPECT_TRUE(SameImage(load_image(write_bytes("lossless.webp", file)), base));
  n = WebPEncodeRGB(base.rgb.data(), 6, 5, 18, 90, &enc);
  Bytes lossy(enc, enc + n);
  WebPFree(enc);
  ImageU8 got = load_image_from_memory(lossy.data(), lossy.size(), "lossy.webp");
  int rw = 0, rh = 0;
  uint8_t* ref = WebPDecodeRGB(lossy.data(), lossy.size(), &rw, &rh);
  ASSERT_NE(ref, nullptr);
  EXPECT_TRUE(SameImage(got, ImageU8{rw, rh, Bytes(ref, ref + size_t(rw) * rh * 3)}));
  WebPFree(ref);
}

// ---------------------------------------------------------------------------------------------------------
// Resize.

TEST(ImageResize, KnownValuesAndInvariants) {
  const ImageU8 ramp = make_image(4, 2, [](int x, int y) {
    return std::array<uint8_t, 3>{uint8_t(x * 10 + y), uint8_t(1 + x), uint8_t(200 - x * 50)};
  });
  // Same size: a copy.
  EXPECT_TRUE(SameImage(resize_like_pillow(ramp, 4, 2, Resample::bicubic), ramp));
  // BOX 4 -> 2: mean of pairs, rounded half up in fixed point.
  ImageU8 box = resize_like_pillow(ramp, 2, 2, Resample::box);
  EXPECT_EQ(box.rgb[0], 5);   // (0 + 10) / 2
  EXPECT_EQ(box.rgb[1], 2);   // (1 + 2) / 2 = 1.5 -> 2
  EXPECT_EQ(box.rgb[3], 25);  // (20 + 30) / 2
  // NEAREST 4 -> 2 takes columns 1 and 3 (centres at 1.0 and 3.0); 2 -> 4 rows repeat 0 0 1 1.
  ImageU8 nn = resize_like_pillow(ramp, 2, 4, Resample::nearest);
  EXPECT_EQ(nn.rgb[0], 10);
  EXPECT_EQ(nn.rgb[3], 30);
  EXPECT_EQ(nn.rgb[1 * 2 * 3], 10);  // row 1 is still source row 0
  EXPECT_EQ(nn.rgb[2 * 2 * 3], 11);  // row 2 is source row 1
  // Constant images stay constant with every filter, in both directions.
  const ImageU8 flat = make_image(13, 7, [](int, int) { return std::array<uint8_t, 3>{17, 128, 250}; });
  for (int f = 0; f <= 5; ++f)
    for (auto [ow, oh] : {std::pair{5, 3}, std::pair{31, 19}, std::pair{13, 20}, std::pair{1, 1}}) {
      ImageU8 r = resize_like_pillow(flat, ow, oh, static_cast<Resample>(f));
      ASSERT_EQ(r.width, ow);
      ASSERT_EQ(r.height, oh);
      for (size_t i = 0; i < r.rgb.size(); i += 3)
        ASSERT_TRUE(r.rgb[i] == 17 && r.rgb[i + 1] == 128 && r.rgb[i + 2] == 250) << "filter " << f;
    }
  // Bicubic upscaling of a hard edge overshoots and is clamped to 0..255.
  const ImageU8 edge = make_image(4, 1, [](int x, int) {
    uint8_t v = x < 2 ? 0 : 255;
    return std::array<uint8_t, 3>{v, v, v};
  });
  ImageU8 up = resize_like_pillow(edge, 16, 1, Resample::bicubic);
  EXPECT_EQ(up.rgb[0], 0);
  EXPECT_EQ(up.rgb[15 * 3], 255);
  EXPECT_THROW(resize_like_pillow(ramp, 0, 3, Resample::bicubic), Error);
}

// ---------------------------------------------------------------------------------------------------------
// preprocessor_config.json.

TEST(ImageConfig, CurrentAndLegacyFormats) {
  PreprocessorConfig c = parse_preprocessor_config(R"({"image_processor_type": "PerceiverImageProcessor",
      "crop_size": {"height": 300, "width": 280}, "do_center_crop": false, "do_normalize": false,
      "do_rescale": false, "do_resize": false, "image_mean": [0.1, 0.2, 0.3], "image_std": 0.5,
      "resample": 2, "rescale_factor": 0.5, "size": {"height": 100, "width": 120}})",
                                                   "cfg.json");
  EXPECT_FALSE(c.do_center_crop);
  EXPECT_FALSE(c.do_normalize);
  EXPECT_FALSE(c.do_rescale);
  EXPECT_FALSE(c.do_resize);
  EXPECT_EQ(c.crop_height, 300);
  EXPECT_EQ(c.crop_width, 280);
  EXPECT_EQ(c.height, 100);
  EXPECT_EQ(c.width, 120);
  EXPECT_EQ(c.resample, Resample::bilinear);
  EXPECT_EQ(c.rescale_factor, 0.5);
  EXPECT_EQ(c.image_mean, (std::array<double, 3>{0.1, 0.2, 0.3}));
  EXPECT_EQ(c.image_std, (std::array<double, 3>{0.5, 0.5, 0.5}));

  // The 2021 PerceiverFeatureExtractor format: integer sizes, no rescale keys.
  c = parse_preprocessor_config(R"({"crop_size": 256, "do_center_crop": true, "do_normalize": true,
      "do_resize": true, "feature_extractor_type": "PerceiverFeatureExtractor",
      "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 224})",
                                "cfg.json");
  const PreprocessorConfig d;
  EXPECT_EQ(c.crop_height, 256);
  EXPECT_EQ(c.crop_width, 256);
  EXPECT_EQ(c.height, 224);
  EXPECT_EQ(c.width, 224);
  EXPECT_EQ(c.resample, Resample::bicubic);
  EXPECT_TRUE(c.do_rescale);
  EXPECT_EQ(c.rescale_factor, d.rescale_factor);
  EXPECT_EQ(c.image_mean, d.image_mean);

  // Defaults for an empty object; [h, w] lists; nulls as HF treats None.
  c = parse_preprocessor_config("{}", "cfg.json");
  EXPECT_TRUE(c.do_center_crop && c.do_resize && c.do_rescale && c.do_normalize);
  EXPECT_EQ(c.height, 224);
  EXPECT_EQ(c.crop_height, 256);
  c = parse_preprocessor_config(R"({"size": [30, 40], "image_mean": null, "resample": null,
      "do_normalize": null})",
                                "cfg.json");
  EXPECT_EQ(c.height, 30);
  EXPECT_EQ(c.width, 40);
  EXPECT_EQ(c.image_mean, d.image_mean);
  EXPECT_EQ(c.resample, Resample::bilinear);
  EXPECT_FALSE(c.do_normalize);
  // shortest_edge is fine while nothing uses `size`.
  c = parse_preprocessor_config(
      R"({"size": {"shortest_edge": 224}, "do_resize": false, "do_center_crop": false})", "cfg.json");
  EXPECT_EQ(c.height, 224);

  // The model's files.
  EXPECT_NO_THROW(load_preprocessor_config(fashion_dir() / "preprocessor_config.json"));
  try {
    load_preprocessor_config("/nonexistent/preprocessor_config.json");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::model);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/preprocessor_config.json"), std::string::npos);
  }
}

TEST(ImageConfig, RefusesNonsense) {
  ExpectModelError("not json", "JSON");
  ExpectModelError("[1, 2]", "object");
  ExpectModelError(R"({"size": {"shortest_edge": 224}})", "not supported");
  ExpectModelError(R"({"crop_size": {"shortest_edge": 224, "longest_edge": 300}})", "not supported");
  ExpectModelError(R"({"size": {"height": 224}})", "height and width");
  ExpectModelError(R"({"size": -224})", "between");
  ExpectModelError(R"({"size": 0})", "between");
  ExpectModelError(R"({"crop_size": {"height": -1, "width": 256}})", "crop_size.height");
  ExpectModelError(R"({"size": 224.0})", "integer");
  ExpectModelError(R"({"size": "224"})");
  ExpectModelError(R"({"size": [224]})", "[height, width]");
  ExpectModelError(R"({"image_std": [0.229, 0, 0.225]})", "image_std[1]");
  ExpectModelError(R"({"image_std": 0})", "image_std");
  ExpectModelError(R"({"image_mean": [0.5, 0.5]})", "3 numbers");
  ExpectModelError(R"({"image_mean": ["a", 1, 2]})", "image_mean[0]");
  ExpectModelError(R"({"resample": 7})", "resample");
  ExpectModelError(R"({"resample": "bicubic"})", "resample");
  ExpectModelError(R"({"do_resize": "yes"})", "do_resize");
  ExpectModelError(R"({"do_center_crop": 1})", "do_center_crop");
  ExpectModelError(R"({"rescale_factor": -1})", "rescale_factor");
  ExpectModelError(R"({"rescale_factor": null})", "rescale_factor");
}

// ---------------------------------------------------------------------------------------------------------
// preprocess() steps.

TEST(ImagePreprocess, CropPaddingAndSwitchedOffSteps) {
  const ImageU8 im = make_image(10, 8, [](int x, int y) {
    return std::array<uint8_t, 3>{uint8_t(1 + x), uint8_t(1 + y), uint8_t(100 + x + 10 * y)};
  });
  PreprocessorConfig c;
  c.do_resize = false;
  c.do_rescale = false;
  c.do_normalize = false;
  // Crop side int(224/256 * 8) = 7: top (8-7)//2 = 0, left (10-7)//2 = 1.
  int h = 0, w = 0;
  preprocessed_size(c, im, &h, &w);
  ASSERT_EQ(h, 7);
  ASSERT_EQ(w, 7);
  std::vector<float> out(3 * 7 * 7);
  preprocess(im, c, out.data());
  EXPECT_EQ(out[0], 2.0f);              // R at crop (0, 0) = image x 1
  EXPECT_EQ(out[7 * 7 + 6 * 7], 7.0f);  // G at crop row 6 = image y 6
  EXPECT_EQ(out[2 * 49 + 48], 100.0f + 7 + 60);
  // size > crop_size: side int(300/256 * 8) = 9 > 8 rows -> zero padding (HF center_crop's pad branch):
  // top = (8-9)//2 = -1, one zero row on top; left = (10-9)//2 = 0.
  c.height = c.width = 300;
  preprocessed_size(c, im, &h, &w);
  ASSERT_EQ(h, 9);
  ASSERT_EQ(w, 9);
  out.assign(3 * 9 * 9, -1);
  preprocess(im, c, out.data());
  for (int x = 0; x < 9; ++x) EXPECT_EQ(out[x], 0.0f);
  EXPECT_EQ(out[9], 1.0f);           // R at (0, 1) = image (0, 0)
  EXPECT_EQ(out[81 + 9 * 8], 8.0f);  // G at row 8 = image row 7
  // No crop, no resize: the image's own size; rescale only.
  c.do_center_crop = false;
  c.do_rescale = true;
  preprocessed_size(c, im, &h, &w);
  EXPECT_EQ(h, 8);
  EXPECT_EQ(w, 10);
  out.assign(3 * 8 * 10, -1);
  preprocess(im, c, out.data());
  EXPECT_EQ(out[0], float(1.0 * (1.0 / 255.0)));
  // Normalisation in float32 with float32 mean/std.
  c.do_normalize = true;
  preprocess(im, c, out.data());
  EXPECT_EQ(out[80 + 10], (float(2.0 / 255.0) - float(0.456)) / float(0.224));  // G at (0, 1) = 2
  // A 1-pixel-high image cannot be centre-cropped (side int(0.875) = 0).
  c = PreprocessorConfig();
  const ImageU8 line = make_image(5, 1, [](int, int) { return std::array<uint8_t, 3>{1, 2, 3}; });
  EXPECT_THROW(preprocessed_size(c, line, &h, &w), Error);
  // Resize with another filter: the output is what resize_like_pillow gives.
  c.do_center_crop = false;
  c.resample = Resample::lanczos;
  c.height = 5;
  c.width = 4;
  c.do_rescale = c.do_normalize = false;
  out.assign(3 * 5 * 4, -1);
  preprocess(im, c, out.data());
  ImageU8 r = resize_like_pillow(im, 4, 5, Resample::lanczos);
  for (int i = 0; i < 20; ++i)
    for (int ch = 0; ch < 3; ++ch) ASSERT_EQ(out[ch * 20 + i], float(r.rgb[i * 3 + ch]));
}

}  // namespace
}  // namespace perceiver
