#include "model/position_encoding.h"

#include <cmath>

namespace perceiver {

std::vector<float> linspace_f32(float start, float end, int steps) {
  // PyTorch 1.13's CPU kernel (RangeFactoriesKernel): step = (end - start) / (steps - 1); the first half
  // counts up from start, the second half down from end, each value computed with a fused multiply-add. Full
  // blocks of 2 x 8 values take the AVX2 vector path: the block's first value as above, then base + k * step
  // (no fusion). The tail is scalar. Checked bit for bit against torch.linspace and the golden vectors.
  std::vector<float> out(steps);
  if (steps == 1) {
    out[0] = start;
    return out;
  }
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int halfway = steps / 2;
  auto scalar = [&](int i) {
    return i < halfway ? std::fma(step, static_cast<float>(i), start)
                       : std::fma(-step, static_cast<float>(steps - 1 - i), end);
  };
  constexpr int kVector = 8;
  int i = 0;
  for (; i + 2 * kVector <= steps; i += 2 * kVector)
    for (int v = i; v < i + 2 * kVector; v += kVector) {
      const float base = scalar(v);
      out[v] = base;
      for (int k = 1; k < kVector; ++k) out[v + k] = base + static_cast<float>(k) * step;
    }
  for (; i < steps; ++i) out[i] = scalar(i);
  return out;
}

std::vector<float> fourier_position_encoding(int height, int width, int max_res_h, int max_res_w,
                                             int num_bands) {
  const std::vector<float> ys = linspace_f32(-1.0f, 1.0f, height);
  const std::vector<float> xs = linspace_f32(-1.0f, 1.0f, width);
  const std::vector<float> freq_y = linspace_f32(1.0f, static_cast<float>(max_res_h / 2.0), num_bands);
  const std::vector<float> freq_x = linspace_f32(1.0f, static_cast<float>(max_res_w / 2.0), num_bands);
  const float pi_f32 = static_cast<float>(M_PI);  // torch multiplies by the scalar cast to float32
  const int channels = 2 + 4 * num_bands;
  std::vector<float> out(size_t(height) * width * channels);
  // sin/cos of fl32(fl32(pos * f) * fl32(pi)), evaluated in double and rounded: within PyTorch's 1 ulp.
  auto sin_cos = [&](float pos, float f, float* s, float* c) {
    const float arg = (pos * f) * pi_f32;
    *s = static_cast<float>(std::sin(static_cast<double>(arg)));
    *c = static_cast<float>(std::cos(static_cast<double>(arg)));
  };
  for (int i = 0; i < height; ++i)
    for (int j = 0; j < width; ++j) {
      float* row = &out[(size_t(i) * width + j) * channels];
      row[0] = ys[i];
      row[1] = xs[j];
      float* sin_y = row + 2;
      float* sin_x = sin_y + num_bands;
      float* cos_y = sin_x + num_bands;
      float* cos_x = cos_y + num_bands;
      for (int k = 0; k < num_bands; ++k) {
        sin_cos(ys[i], freq_y[k], &sin_y[k], &cos_y[k]);
        sin_cos(xs[j], freq_x[k], &sin_x[k], &cos_x[k]);
      }
    }
  return out;
}

}  // namespace perceiver
