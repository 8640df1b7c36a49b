// PerceiverImagePreprocessor(prep_type="conv1x1") of PerceiverForImageClassificationLearned: a 1x1 conv to
// 256 channels, then a trainable position table [image_size^2, 256] through a linear projection (done once
// at load: it does not depend on the image): C = 512. Admits image_size x image_size inputs only.
#include <cstring>

#include "model/modules.h"

namespace perceiver {
namespace {

class LearnedImagePreprocessor final : public InputPreprocessor {
 public:
  LearnedImagePreprocessor(LinearPacker& packer, const PerceiverConfig& config)
      : channels_(config.input_channels), image_size_(config.image_size) {
    WeightReader& reader = packer.reader;
    const std::string p = "perceiver.input_preprocessor.";
    auto w = reader.get(p + "convnet_1x1.weight", {kLearnedChannels, 3, 1, 1});
    auto b = reader.get(p + "convnet_1x1.bias", {kLearnedChannels});
    conv1x1_ = packer.backend.pack_linear(w.data, b.data, kLearnedChannels, 3, Precision::fp32);
    const int64_t n = int64_t(image_size_) * image_size_;
    auto table = reader.get(p + "position_embeddings.position_embeddings", {n, kLearnedChannels});
    auto proj = packer.linear(p + "positions_projection", kLearnedChannels, kLearnedChannels);
    positions_.resize(table.size);  // [N, 256]
    packer.backend.linear(*proj, table.data, kLearnedChannels, static_cast<int>(n), positions_.data(),
                          kLearnedChannels, Activation::none, nullptr);
  }

  int channels() const override { return channels_; }
  InputGeometry geometry(int height, int width) const override { return {height, width}; }
  void check_input_size(const PerceiverConfig&, int height, int width) const override {
    if (int64_t(height) * width != int64_t(image_size_) * image_size_)
      throw Error(ErrorKind::bad_input, "its position table covers " + std::to_string(image_size_) + "x" +
                                            std::to_string(image_size_) + " pixels");
  }
  double macs(int height, int width) const override { return double(height) * width * 3 * kLearnedChannels; }
  size_t activation_floats(int height, int width) const override { return size_t(height) * width * 3; }

  // stage: pixels channels-last [B * H * W, 3].
  void prepare(PreprocessorState& st, int batch, int height, int width) const override {
    if (batch <= st.batch && st.height == height && st.width == width) return;
    st.stage.assign(size_t(batch) * activation_floats(height, width), 0.0f);
    st.batch = batch;
    st.height = height;
    st.width = width;
  }

  void run(Backend& backend, PreprocessorState& st, const float* pixels, int B, int H, int W, float* inputs,
           const Tracer&) const override {
    const int N = H * W, C = channels_;
    float* hwc = st.stage.data();
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < 3; ++i)
        for (int t = 0; t < N; ++t) hwc[(size_t(b) * N + t) * 3 + i] = pixels[(size_t(b) * 3 + i) * N + t];
    backend.linear(*conv1x1_, hwc, 3, B * N, inputs, C, Activation::none, nullptr);
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < N; ++t)
        std::memcpy(&inputs[(size_t(b) * N + t) * C + kLearnedChannels], &positions_[size_t(t) * kLearnedChannels],
                    kLearnedChannels * sizeof(float));
  }

 private:
  int channels_, image_size_;
  std::unique_ptr<PackedLinear> conv1x1_;  // [256, 3]
  std::vector<float> positions_;           // projected position table [N, 256]
};

}  // namespace

std::unique_ptr<InputPreprocessor> make_learned_image_preprocessor(LinearPacker& packer,
                                                                   const PerceiverConfig& config) {
  return std::make_unique<LearnedImagePreprocessor>(packer, config);
}

}  // namespace perceiver
