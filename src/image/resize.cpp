// Pillow's 8-bit resampling (libImaging/Resample.c ImagingResample, and ImagingScaleAffine for NEAREST),
// reproduced operation for operation so that the uint8 results are identical:
//  - per output pixel: taps [xmin, xmin + n) around center = (o + 0.5) * scale, the kernel stretched by
//    max(scale, 1), weights normalised to sum 1, then fixed point int(w * 2^22 +- 0.5);
//  - horizontal pass first (only over the rows the vertical pass reads), uint8 rounding/clamping, then the
//    vertical pass; a pass whose size does not change is skipped.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numbers>
#include <vector>

#include "image/image_internal.h"
#include "perceiver/error.h"

namespace perceiver {

namespace image_detail {

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

// The filters exactly as Pillow writes them (including its float constants in the Hamming window).
double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

double hamming_filter(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * std::numbers::pi;
  return std::sin(x) / x * (double(0.54f) + double(0.46f) * std::cos(x));
}

double bicubic_filter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc_filter(double x) {
  if (x == 0.0) return 1.0;
  x = x * std::numbers::pi;
  return std::sin(x) / x;
}

double lanczos_filter(double x) {
  if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
  return 0.0;
}

struct Filter {
  double (*fn)(double);
  double support;
};

Filter filter_for(Resample r) {
  switch (r) {
    case Resample::box:
      return {box_filter, 0.5};
    case Resample::bilinear:
      return {bilinear_filter, 1.0};
    case Resample::hamming:
      return {hamming_filter, 1.0};
    case Resample::bicubic:
      return {bicubic_filter, 2.0};
    case Resample::lanczos:
      return {lanczos_filter, 3.0};
    case Resample::nearest:
      break;
  }
  throw Error(ErrorKind::internal, "resize: no convolution filter for NEAREST");
}

// Fixed-point coefficients of one pass: output o reads input [start[o], start[o] + count[o]) with
// weights k[o * ksize .. o * ksize + count[o]).
struct Coefficients {
  int ksize = 0;
  std::vector<int> start, count;
  std::vector<int32_t> k;
};

Coefficients precompute(int in_size, int out_size, const Filter& filter) {
  Coefficients c;
  const double scale = double(in_size) / out_size;  // Pillow: (double)(box1 - box0) / outSize, box in float
  const double filterscale = std::max(scale, 1.0);
  const double support = filter.support * filterscale;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.start.resize(out_size);
  c.count.resize(out_size);
  c.k.assign(size_t(out_size) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = 0.0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      w[x] = filter.fn((double(x + xmin) - center + 0.5) * ss);
      ww += w[x];
    }
    int32_t* k = &c.k[size_t(xx) * c.ksize];
    for (int x = 0; x < xmax; ++x) {
      double v = ww != 0.0 ? w[x] / ww : w[x];
      k[x] = v < 0 ? int32_t(-0.5 + v * (1 << kPrecisionBits)) : int32_t(0.5 + v * (1 << kPrecisionBits));
    }
    c.start[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t acc) {
  int32_t v = acc >> kPrecisionBits;  // arithmetic shift, as Pillow's lookup table indexing does
  return uint8_t(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Rows [row0, row0 + rows) of `in`, resampled horizontally to `out_width`: `out` is rows x out_width RGB.
void horizontal_pass(const RgbView& in, int row0, int rows, const Coefficients& c, int out_width,
                     uint8_t* out) {
  for (int y = 0; y < rows; ++y) {
    const uint8_t* src = in.data + size_t(row0 + y) * in.stride;
    uint8_t* dst = out + size_t(y) * out_width * 3;
    for (int xx = 0; xx < out_width; ++xx) {
      const int32_t* k = &c.k[size_t(xx) * c.ksize];
      const uint8_t* p = src + size_t(c.start[xx]) * 3;
      const int n = c.count[xx];
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < n; ++x) {
        s0 += p[3 * x + 0] * k[x];
        s1 += p[3 * x + 1] * k[x];
        s2 += p[3 * x + 2] * k[x];
      }
      dst[3 * xx + 0] = clip8(s0);
      dst[3 * xx + 1] = clip8(s1);
      dst[3 * xx + 2] = clip8(s2);
    }
  }
}

// `in` resampled vertically to `out_height` rows; `row_offset` is subtracted from the coefficient starts
// (the horizontal pass kept only the rows the vertical pass reads).
void vertical_pass(const RgbView& in, const Coefficients& c, int row_offset, int out_height, uint8_t* out) {
  const size_t line = size_t(in.width) * 3;
  std::vector<int32_t> acc(line);
  for (int yy = 0; yy < out_height; ++yy) {
    const int32_t* k = &c.k[size_t(yy) * c.ksize];
    std::fill(acc.begin(), acc.end(), int32_t(1) << (kPrecisionBits - 1));
    const int first = c.start[yy] - row_offset;
    for (int y = 0; y < c.count[yy]; ++y) {
      const uint8_t* src = in.data + size_t(first + y) * in.stride;
      const int32_t ky = k[y];
      int32_t* a = acc.data();
      for (size_t i = 0; i < line; ++i) a[i] += src[i] * ky;
    }
    uint8_t* dst = out + size_t(yy) * line;
    for (size_t i = 0; i < line; ++i) dst[i] = clip8(acc[i]);
  }
}

// ImagingScaleAffine: positions stepped by repeated addition, then truncated (negative -> -1).
void nearest(const RgbView& in, int out_width, int out_height, uint8_t* out) {
  const double ax = double(in.width) / out_width, ay = double(in.height) / out_height;
  auto coord = [](double v) { return v < 0.0 ? -1 : int(v); };
  std::vector<int> xin(out_width, -1);
  double xo = 0.0 + ax * 0.5;
  for (int x = 0; x < out_width; ++x, xo += ax) {
    int xi = coord(xo);
    if (xi >= 0 && xi < in.width) xin[x] = xi;
  }
  double yo = 0.0 + ay * 0.5;
  for (int y = 0; y < out_height; ++y, yo += ay) {
    uint8_t* dst = out + size_t(y) * out_width * 3;
    int yi = coord(yo);
    if (yi < 0 || yi >= in.height) {
      std::memset(dst, 0, size_t(out_width) * 3);
      continue;
    }
    const uint8_t* src = in.data + size_t(yi) * in.stride;
    for (int x = 0; x < out_width; ++x) {
      if (xin[x] < 0) {
        dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = 0;
      } else {
        std::memcpy(dst + 3 * x, src + size_t(xin[x]) * 3, 3);
      }
    }
  }
}

}  // namespace

void resize_view(const RgbView& in, int out_width, int out_height, Resample filter, ImageU8* out) {
  if (in.width <= 0 || in.height <= 0 || out_width <= 0 || out_height <= 0)
    throw Error(ErrorKind::bad_input, "resize: empty image (" + std::to_string(in.width) + "x" +
                                          std::to_string(in.height) + " -> " + std::to_string(out_width) +
                                          "x" + std::to_string(out_height) + ")");
  out->width = out_width;
  out->height = out_height;
  out->rgb.resize(size_t(out_width) * out_height * 3);
  const bool need_horizontal = out_width != in.width;
  const bool need_vertical = out_height != in.height;
  if (!need_horizontal && !need_vertical) {  // Pillow returns a copy
    for (int y = 0; y < in.height; ++y)
      std::memcpy(out->rgb.data() + size_t(y) * in.width * 3, in.data + size_t(y) * in.stride,
                  size_t(in.width) * 3);
    return;
  }
  if (filter == Resample::nearest) {
    nearest(in, out_width, out_height, out->rgb.data());
    return;
  }
  const Filter f = filter_for(filter);
  const Coefficients vert = precompute(in.height, out_height, f);
  if (!need_horizontal) {
    vertical_pass(in, vert, 0, out_height, out->rgb.data());
    return;
  }
  const Coefficients horiz = precompute(in.width, out_width, f);
  // Only the rows the vertical pass reads: [first used row, last used row].
  const int row0 = vert.start[0];
  const int row1 = vert.start[out_height - 1] + vert.count[out_height - 1];
  if (!need_vertical) {
    horizontal_pass(in, row0, row1 - row0, horiz, out_width, out->rgb.data());
    return;
  }
  std::vector<uint8_t> temp(size_t(row1 - row0) * out_width * 3);
  horizontal_pass(in, row0, row1 - row0, horiz, out_width, temp.data());
  const RgbView temp_view{temp.data(), out_width, row1 - row0, size_t(out_width) * 3};
  vertical_pass(temp_view, vert, row0, out_height, out->rgb.data());
}

}  // namespace image_detail

ImageU8 resize_like_pillow(const ImageU8& image, int out_width, int out_height, Resample filter) {
  if (image.rgb.size() != size_t(image.width) * size_t(image.height) * 3 || image.width < 0 ||
      image.height < 0)
    throw Error(ErrorKind::internal, "resize_like_pillow: pixel buffer does not match the image size");
  ImageU8 out;
  image_detail::resize_view({image.rgb.data(), image.width, image.height, size_t(image.width) * 3}, out_width,
                            out_height, filter, &out);
  return out;
}

}  // namespace perceiver
