// Input-independent position features of the Perceiver image preprocessors.
#pragma once

#include <vector>

namespace perceiver {

// torch.linspace(start, end, steps) in float32, emulating PyTorch's CPU kernel (two-sided stepping).
std::vector<float> linspace_f32(float start, float end, int steps);

// HF generate_fourier_features(build_linear_positions((height, width)), num_bands, max_resolution,
// concat_pos=True, sine_only=False). Output [height * width, 2 + 4 * num_bands], channels:
//   [y, x, sin(pi f_k y) k<bands, sin(pi f_k x), cos(pi f_k y), cos(pi f_k x)]
// with y the row coordinate in [-1, 1] and f_k = linspace(1, max_resolution / 2, num_bands).
std::vector<float> fourier_position_encoding(int height, int width, int max_res_h, int max_res_w,
                                             int num_bands);

}  // namespace perceiver
