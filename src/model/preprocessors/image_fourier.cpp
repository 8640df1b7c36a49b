// PerceiverImagePreprocessor(prep_type="pixels") of PerceiverForImageClassificationFourier: every pixel is
// a token, its 3 values followed by 2D Fourier position features (max_resolution 224, 64 bands): C = 261.
#include <cstring>

#include "model/modules.h"
#include "model/position_encoding.h"

namespace perceiver {
namespace {

constexpr int kMaxResolution = 224;

class FourierImagePreprocessor final : public InputPreprocessor {
 public:
  explicit FourierImagePreprocessor(const PerceiverConfig& config) : channels_(config.input_channels) {}

  int channels() const override { return channels_; }
  InputGeometry geometry(int height, int width) const override { return {height, width}; }
  void check_input_size(const PerceiverConfig&, int, int) const override {}
  double macs(int, int) const override { return 0; }
  size_t activation_floats(int, int) const override { return 0; }

  // positions: [H * W, 258].
  void prepare(PreprocessorState& st, int batch, int height, int width) const override {
    if (batch <= st.batch && st.height == height && st.width == width) return;
    st.positions = fourier_position_encoding(height, width, kMaxResolution, kMaxResolution, kFourierBands);
    st.batch = batch;
    st.height = height;
    st.width = width;
  }

  void run(Backend&, PreprocessorState& st, const float* pixels, int B, int H, int W, float* inputs,
           const Tracer&) const override {
    const int N = H * W, C = channels_, pos_channels = C - 3;
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < N; ++t) {
        float* token = &inputs[(size_t(b) * N + t) * C];
        for (int i = 0; i < 3; ++i) token[i] = pixels[(size_t(b) * 3 + i) * N + t];  // NCHW -> channels-last
        std::memcpy(token + 3, &st.positions[size_t(t) * pos_channels], pos_channels * sizeof(float));
      }
  }

 private:
  int channels_;
};

}  // namespace

std::unique_ptr<InputPreprocessor> make_fourier_image_preprocessor(LinearPacker&, const PerceiverConfig& config) {
  return std::make_unique<FourierImagePreprocessor>(config);
}

}  // namespace perceiver
