// The conv stem's image ops as plain loops over OpenMP threads (see Backend::im2col, scale_shift_relu,
// max_pool for the layouts). Both backends run these: they are memory-bound copies that the compiler
// vectorises, 1-2% of the conv model's time.
#pragma once

namespace perceiver::image_ops {

void im2col(const float* image, int channels, int height, int width, int kernel, int stride, int pad, int out_h,
            int out_w, int row0, int rows, float* col, int threads);
void scale_shift_relu(float* x, long tokens, int channels, const float* scale, const float* shift, int threads);
void max_pool(const float* x, int batch, int height, int width, int channels, int kernel, int stride, float* out,
              long out_ld, int threads);

}  // namespace perceiver::image_ops
