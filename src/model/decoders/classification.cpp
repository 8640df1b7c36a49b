// PerceiverClassificationDecoder (+ the classification postprocessing, none): one trainable query [1, D]
// attends to the latents (decoding_cross_attention, 1 head, no query residual), then final_layer to the
// logits [B, num_labels].
#include <cstring>

#include "model/modules.h"

namespace perceiver {

double perceiver_layer_macs(const LayerShape& s, double nq, double nk);  // encoder.cpp

namespace {

const std::string kPrefix = "perceiver.decoder.decoder.";

std::vector<float> read_query(WeightReader& reader, int width) {
  return reader.get(kPrefix + "output_position_encodings.position_embeddings", {1, width}).vec();
}

class ClassificationDecoder final : public Decoder {
 public:
  ClassificationDecoder(LinearPacker& packer, const PerceiverConfig& c, int d_latents)
      : num_labels_(c.num_labels()),
        width_(c.decoder_cross.q_dim),
        query_(read_query(packer.reader, width_)),
        cross_attention_(packer, kPrefix + "decoding_cross_attention.", c.decoder_cross, query_.data(), 1),
        final_layer_(packer.linear(kPrefix + "final_layer", num_labels_, width_)) {
    (void)d_latents;
  }

  int num_outputs() const override { return num_labels_; }
  int feature_width() const override { return width_; }
  double macs(int num_latents) const override {
    return perceiver_layer_macs(cross_attention_.shape(), 1, num_latents) + double(width_) * num_labels_;
  }

  void run(Backend& backend, Precision precision, PerceiverEncoder::Buffers& buffers, const float* latents,
           int B, int L, float* logits, float* features, const Tracer& trace) const override {
    const int D = width_;
    std::vector<float>& x = buffers.layer.decoder_x;  // [B, 1, D]
    if (x.size() < size_t(B) * D) x.resize(size_t(B) * D);
    for (int b = 0; b < B; ++b) std::memcpy(&x[size_t(b) * D], query_.data(), sizeof(float) * D);
    trace("decoder_query", {B, 1, D}, x.data());
    const int heads = cross_attention_.shape().heads;
    float* probs = nullptr;
    if (trace && trace.probs) {
      buffers.probs.resize(size_t(B) * heads * L);
      probs = buffers.probs.data();
    }
    cross_attention_.run(backend, precision, buffers.layer, x.data(), B, 1, latents, L, probs);
    if (probs) trace("decoder_cross_attn_probs", {B, heads, 1, L}, probs);
    trace("decoder_cross_attn_out", {B, 1, D}, x.data());
    if (features) std::memcpy(features, x.data(), sizeof(float) * size_t(B) * D);
    if (logits) {
      backend.linear(*final_layer_, x.data(), D, B, logits, num_labels_, Activation::none, nullptr);
      trace("logits", {B, num_labels_}, logits);
    }
  }

 private:
  int num_labels_, width_;
  std::vector<float> query_;  // [1, D]
  nn::PerceiverLayer cross_attention_;
  std::unique_ptr<PackedLinear> final_layer_;
};

}  // namespace

std::unique_ptr<Decoder> make_classification_decoder(LinearPacker& packer, const PerceiverConfig& config,
                                                     int d_latents) {
  return std::make_unique<ClassificationDecoder>(packer, config, d_latents);
}

}  // namespace perceiver
