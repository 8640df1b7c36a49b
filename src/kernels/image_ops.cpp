#include "kernels/image_ops.h"

#include "kernels/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace perceiver::image_ops {

void im2col(const float* image, int channels, int height, int width, int kernel, int stride, int pad, int out_h,
            int out_w, int row0, int rows, float* col, int threads) {
  const int K = channels * kernel * kernel;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (int r = 0; r < rows; ++r)
    for (int x = 0; x < out_w; ++x) {
      const int b = (row0 + r) / out_h, y = (row0 + r) % out_h;
      float* dst = col + (size_t(r) * out_w + x) * K;
      for (int c = 0; c < channels; ++c) {
        const float* plane = image + (size_t(b) * channels + c) * height * width;
        for (int ky = 0; ky < kernel; ++ky) {
          const int iy = stride * y + ky - pad;
          for (int kx = 0; kx < kernel; ++kx) {
            const int ix = stride * x + kx - pad;
            *dst++ = (iy < 0 || iy >= height || ix < 0 || ix >= width) ? 0.0f : plane[size_t(iy) * width + ix];
          }
        }
      }
    }
}

void scale_shift_relu(float* x, long tokens, int channels, const float* scale, const float* shift, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (long t = 0; t < tokens; ++t) {
    float* row = x + size_t(t) * channels;
    for (int c = 0; c < channels; ++c) row[c] = std::max(0.0f, row[c] * scale[c] + shift[c]);
  }
}

void max_pool(const float* x, int batch, int height, int width, int channels, int kernel, int stride, float* out,
              long out_ld, int threads) {
  const int out_h = (height - kernel) / stride + 1, out_w = (width - kernel) / stride + 1;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (int b = 0; b < batch; ++b)
    for (int y = 0; y < out_h; ++y)
      for (int xo = 0; xo < out_w; ++xo) {
        float* dst = out + (size_t(b) * out_h * out_w + size_t(y) * out_w + xo) * out_ld;
        for (int c = 0; c < channels; ++c) {
          float m = -INFINITY;
          for (int dy = 0; dy < kernel; ++dy)
            for (int dx = 0; dx < kernel; ++dx)
              m = std::max(m, x[((size_t(b) * height + stride * y + dy) * width + stride * xo + dx) * channels + c]);
          dst[c] = m;
        }
      }
}

}  // namespace perceiver::image_ops

namespace perceiver {

void Backend::im2col(const float* image, int channels, int height, int width, int kernel, int stride, int pad,
                     int out_h, int out_w, int row0, int rows, float* col) {
  image_ops::im2col(image, channels, height, width, kernel, stride, pad, out_h, out_w, row0, rows, col, threads());
}

void Backend::scale_shift_relu(float* x, long tokens, int channels, const float* scale, const float* shift) {
  image_ops::scale_shift_relu(x, tokens, channels, scale, shift, threads());
}

void Backend::max_pool(const float* x, int batch, int height, int width, int channels, int kernel, int stride,
                       float* out, long out_ld) {
  image_ops::max_pool(x, batch, height, width, channels, kernel, stride, out, out_ld, threads());
}

}  // namespace perceiver
