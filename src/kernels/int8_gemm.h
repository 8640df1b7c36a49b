// int8 linear layers: y = act(x W^T + b) + residual with W quantised once at pack time and x quantised per
// row at run time, products summed exactly in int32, everything after the sum in fp32.
//
//   weights      symmetric per output channel: W[n, k] ~ w_scale[n] * Wq[n, k], Wq in [-127, 127],
//                w_scale[n] = max_k |W[n, k]| / 127.
//   activations  asymmetric per row (per token), unsigned: x[m, k] ~ x_scale[m] * (Xq[m, k] - zero[m]),
//                Xq in [0, 255], the range [min(0, min x), max(0, max x)] mapped onto 0..255 (0 exactly
//                representable). u8 x s8 is what vpdpbusd multiplies.
//   sum          acc[m, n] = sum_k Xq[m, k] Wq[n, k] - zero[m] * sum_k Wq[n, k]   (int32, exact; K <= 32768)
//   epilogue     y = fma(float(acc), x_scale[m] * w_scale[n], b[n]); GELU; + residual   (fp32)
//
// Kernels: AMX-INT8 (tdpbusd on 16 x 64-byte tiles), AVX-512 VNNI (zmm vpdpbusd), AVX-VNNI (ymm vpdpbusd,
// VEX), and the plain C++ loops, which are the definition: every fast kernel computes bit-identical results (the integer sums are exact, and the fp32
// epilogue, GELU included, is the same sequence of IEEE operations in every kernel). Picked at run time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/scratch.h"

namespace perceiver::int8 {

enum class Kernel { plain, avx_vnni, avx512_vnni, amx_int8 };
const char* kernel_name(Kernel kernel);
bool kernel_supported(Kernel kernel);  // by this CPU (and, for AMX, this process's tile permission)
// The fastest supported kernel: AMX-INT8 (unless PERCEIVER_DISABLE_AMX or PERCEIVER_DISABLE_AVX512 is set),
// else AVX-512 VNNI (unless PERCEIVER_DISABLE_AVX512 is set), else AVX-VNNI, else plain.
Kernel best_kernel();

// W [N, K] quantised and packed for the kernels: K in groups of 4 (zero padded), N in panels of 64 output
// columns (the last one narrower, a multiple of 16, zero padded); panel p is [k_groups][width][4] int8, so
// that one 64-byte vector holds 16 columns x 4 consecutive k, and 16 consecutive k-groups of 16 columns are
// one AMX B tile (rows width * 4 bytes apart). Scales, column sums and bias padded to padded_n(). The data
// ends in kTileSlack zero bytes: an AMX tile of the last k-groups may read past the last panel (the matching
// activation bytes are zero, so what it reads there never counts).
class Int8Weights {
 public:
  static constexpr int kPanel = 64;
  static constexpr int kMaxK = 32768;  // keeps every int32 sum below 2^31
  static constexpr int kTileSlack = 4096;  // >= 15 k-groups x 64 columns x 4 bytes

  // The parts stacked by rows; a part without bias counts as zeros. threads: for the packing loop.
  Int8Weights(const std::vector<LinearPart>& parts, int k, int threads);

  int n() const { return n_; }
  int k() const { return k_; }
  int k_groups() const { return (k_ + 3) / 4; }
  int padded_k() const { return 4 * k_groups(); }
  int padded_n() const { return n_pad_; }
  int panels() const { return (n_pad_ + kPanel - 1) / kPanel; }
  int panel_width(int p) const { return n_pad_ - kPanel * p < kPanel ? n_pad_ - kPanel * p : kPanel; }
  const int8_t* panel(int p) const { return data_.as<int8_t>() + size_t(p) * kPanel * padded_k(); }
  // Wq[n, k] (0 in the padding).
  int8_t at(int n, int k) const {
    const int p = n / kPanel;
    return panel(p)[(size_t(k / 4) * panel_width(p) + n % kPanel) * 4 + k % 4];
  }
  const float* scales() const { return scale_.as<float>(); }            // w_scale [padded_n]
  const int32_t* column_sums() const { return colsum_.as<int32_t>(); }  // sum_k Wq[n, k] [padded_n]
  const float* bias() const { return bias_.as<float>(); }               // [padded_n], zeros without bias
  size_t bytes() const { return size_t(n_pad_) * (padded_k() + 12); }

 private:
  int n_ = 0, k_ = 0, n_pad_ = 0;
  Scratch data_, scale_, colsum_, bias_;
};

// One row's quantisation parameters (see the top of this file).
struct RowQuant {
  float scale = 1.0f;    // x_scale
  float inverse = 1.0f;  // 1 / x_scale: Xq = clamp(nearbyint(x * inverse) + zero, 0, 255)
  int32_t zero = 0;
};
// From the row's min and max (any sign); the same function for every kernel.
RowQuant row_quant(float min_x, float max_x);

// y[m, :N] = act(x[m, :K] W^T + b) (+ residual[m, :N]), m < rows; x rows ldx apart, y and residual rows ldy
// apart; residual may be y itself or nullptr. scratch: the caller's, grown here to hold the quantised x.
void linear(Kernel kernel, const Int8Weights& w, const float* x, long ldx, int rows, float* y, long ldy,
            bool gelu, const float* residual, int threads, Scratch& scratch);

// Quantises rows of x into q ([rows, padded_k], the padding zeroed) and their parameters; for tests.
void quantize_rows(Kernel kernel, const float* x, long ldx, int rows, int k, int padded_k, uint8_t* q,
                   RowQuant* params);

// The epilogue's GELU, 0.5 x (1 + erf(x / sqrt 2)) with erf by Abramowitz & Stegun 7.1.26 (|error|
// <= 1.5e-7), as every int8 kernel computes it; for tests.
float gelu(float x);

}  // namespace perceiver::int8
