// PerceiverImagePreprocessor(prep_type="conv") of PerceiverForImageClassificationConvProcessing:
//   Conv2DDownsample (7x7 stride-2 conv pad 3, eval BatchNorm, ReLU, 3x3 stride-2 max-pool) to 64 channels,
//   then 2D Fourier position features (max_resolution 56, 64 bands) concatenated: C = 64 + 258 = 322.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/modules.h"
#include "model/position_encoding.h"

namespace perceiver {
namespace {

constexpr float kBatchNormEps = 1e-5f;
constexpr int kKernel = 7, kStride = 2, kPad = 3, kPoolKernel = 3, kPoolStride = 2;
constexpr int kStemK = 3 * kKernel * kKernel;
constexpr int kMaxResolution = 56;  // HF's max_resolution of the conv model's position encoding

// Conv stem rows per im2col band: about 1 MB of im2col (16 rows at 224x224).
int stem_band_rows(int stem_width) { return std::max(1, (1 << 20) / (stem_width * kStemK * 4)); }

class ConvImagePreprocessor final : public InputPreprocessor {
 public:
  ConvImagePreprocessor(LinearPacker& packer, const PerceiverConfig& config) : channels_(config.input_channels) {
    WeightReader& reader = packer.reader;
    const std::string p = "perceiver.input_preprocessor.convnet.";
    auto w = reader.get(p + "conv.weight", {kConvStemChannels, 3, kKernel, kKernel});
    conv_ = packer.pack({&w}, {nullptr}, kStemK, Precision::fp32);
    auto gamma = reader.get(p + "batchnorm.weight", {kConvStemChannels});
    auto beta = reader.get(p + "batchnorm.bias", {kConvStemChannels});
    auto mean = reader.get(p + "batchnorm.running_mean", {kConvStemChannels});
    auto var = reader.get(p + "batchnorm.running_var", {kConvStemChannels});
    bn_scale_.resize(kConvStemChannels);
    bn_shift_.resize(kConvStemChannels);
    for (int o = 0; o < kConvStemChannels; ++o) {
      bn_scale_[o] = gamma[o] / std::sqrt(var[o] + kBatchNormEps);
      bn_shift_[o] = beta[o] - mean[o] * bn_scale_[o];
    }
  }

  int channels() const override { return channels_; }
  InputGeometry geometry(int height, int width) const override {
    // Pool row i takes stem rows 2i..2i+2, stem row r sees pixels 2r-3..2r+3: pixels 4i-3..4i+7.
    InputGeometry g{conv_pool_out(conv_stem_out(height)), conv_pool_out(conv_stem_out(width))};
    g.pixel_stride = kStride * kPoolStride;
    g.pixel_offset = kStride * (kPoolKernel - 1) / 2.0 + (kKernel - 1) / 2.0 - kPad;
    g.receptive_field = (kPoolKernel - 1) * kStride + kKernel;
    return g;
  }
  void check_input_size(const PerceiverConfig&, int height, int width) const override {
    if (height < 5 || width < 5)
      throw Error(ErrorKind::bad_input, "the conv stem needs at least 5x5 pixels");
  }
  double macs(int height, int width) const override {
    return double(conv_stem_out(height)) * conv_stem_out(width) * kConvStemChannels * kStemK;
  }
  size_t activation_floats(int height, int width) const override {
    return size_t(conv_stem_out(height)) * conv_stem_out(width) * kConvStemChannels;
  }

  // positions: [N, 258]; stage: im2col band [band * W1, 147]; stage2: stem output [B, H1, W1, 64].
  void prepare(PreprocessorState& st, int batch, int height, int width) const override {
    if (batch <= st.batch && st.height == height && st.width == width) return;
    const InputGeometry g = geometry(height, width);
    const int w1 = conv_stem_out(width);
    st.positions = fourier_position_encoding(g.tokens_h, g.tokens_w, kMaxResolution, kMaxResolution,
                                             kFourierBands);
    st.stage.assign(size_t(stem_band_rows(w1)) * w1 * kStemK, 0.0f);
    st.stage2.assign(size_t(batch) * activation_floats(height, width), 0.0f);
    st.batch = batch;
    st.height = height;
    st.width = width;
  }

  void run(Backend& backend, PreprocessorState& st, const float* pixels, int B, int H, int W, float* inputs,
           const Tracer& trace) const override {
    const int H1 = conv_stem_out(H), W1 = conv_stem_out(W);
    const InputGeometry g = geometry(H, W);
    const int H2 = g.tokens_h, W2 = g.tokens_w, N = g.tokens(), C = channels_;
    // The 7x7 stride-2 conv as im2col + GEMM, a band of stem rows at a time (about 1 MB) so that the im2col
    // buffer stays small and in cache.
    float* stem = st.stage2.data();  // [B, H1, W1, 64] channels-last
    const int band = stem_band_rows(W1);
    for (int r0 = 0; r0 < B * H1; r0 += band) {
      const int rows = std::min(band, B * H1 - r0);
      backend.im2col(pixels, 3, H, W, kKernel, kStride, kPad, H1, W1, r0, rows, st.stage.data());
      backend.linear(*conv_, st.stage.data(), kStemK, rows * W1, stem + size_t(r0) * W1 * kConvStemChannels,
                     kConvStemChannels, Activation::none, nullptr);
    }
    auto trace_nchw = [&](const char* name, const float* src, int h, int wd, long token_stride,
                          long batch_stride) {
      if (!trace) return;
      std::vector<float> nchw(size_t(B) * kConvStemChannels * h * wd);
      for (int b = 0; b < B; ++b)
        for (int o = 0; o < kConvStemChannels; ++o)
          for (int t = 0; t < h * wd; ++t)
            nchw[(size_t(b) * kConvStemChannels + o) * h * wd + t] = src[b * batch_stride + t * token_stride + o];
      trace(name, {B, kConvStemChannels, h, wd}, nchw.data());
    };
    trace_nchw("conv_out", stem, H1, W1, kConvStemChannels, long(H1) * W1 * kConvStemChannels);
    backend.scale_shift_relu(stem, long(B) * H1 * W1, kConvStemChannels, bn_scale_.data(), bn_shift_.data());
    // Max-pool straight into the first 64 channels of each token.
    backend.max_pool(stem, B, H1, W1, kConvStemChannels, kPoolKernel, kPoolStride, inputs, C);
    trace_nchw("conv_pool_out", inputs, H2, W2, C, long(N) * C);
    const int pos_channels = C - kConvStemChannels;
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < N; ++t)
        std::memcpy(&inputs[(size_t(b) * N + t) * C + kConvStemChannels], &st.positions[size_t(t) * pos_channels],
                    pos_channels * sizeof(float));
  }

 private:
  int channels_;
  std::unique_ptr<PackedLinear> conv_;     // [64, 3*7*7] (OIHW flattened)
  std::vector<float> bn_scale_, bn_shift_;  // folded eval-mode BatchNorm, [64]
};

}  // namespace

std::unique_ptr<InputPreprocessor> make_conv_image_preprocessor(LinearPacker& packer,
                                                                const PerceiverConfig& config) {
  return std::make_unique<ConvImagePreprocessor>(packer, config);
}

}  // namespace perceiver
