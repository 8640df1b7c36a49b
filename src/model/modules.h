// The modules a Perceiver IO model is made of, as Hugging Face's modeling_perceiver.py splits it:
//
//   inputs --InputPreprocessor--> [B, N, C] --PerceiverEncoder--> latents [B, L, D] --Decoder--> outputs
//
// A model architecture (config.json's "architectures") names one preprocessor and one decoder in the
// registry (src/model/registry.cpp). A new Perceiver (text, optical flow, multimodal) adds its preprocessor
// and decoder as new files there; the encoder and the layer (src/nn/perceiver_layer.h) are shared.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/kernels.h"
#include "model/config.h"
#include "model/weights.h"
#include "nn/perceiver_layer.h"
#include "perceiver/perceiver.h"

namespace perceiver {

// Forwards intermediate results to ForwardArgs::trace (no-op without one).
struct Tracer {
  const TraceFn* fn = nullptr;
  bool probs = false;  // also the attention probabilities
  explicit operator bool() const { return fn != nullptr; }
  void operator()(std::string_view name, const std::vector<int64_t>& shape, const float* data) const {
    if (fn) (*fn)(name, shape, data);
  }
};

// Token grid of the encoder's input for an image size (conv: after the stem). Token (row, col), index
// row * tokens_w + col, is centred on input pixel (pixel_offset + pixel_stride * row, ... * col) and sees a
// receptive_field x receptive_field square of pixels.
struct InputGeometry {
  int tokens_h = 0, tokens_w = 0;
  int pixel_stride = 1;
  double pixel_offset = 0;
  int receptive_field = 1;
  int tokens() const { return tokens_h * tokens_w; }
};

// Buffers a preprocessor keeps in a context, planned for one (height, width) and up to `batch` images.
struct PreprocessorState {
  int batch = 0, height = 0, width = 0;
  std::vector<float> positions;     // input-independent position features, [N, channels]
  std::vector<float> stage, stage2; // per-preprocessor intermediates (conv: im2col band, stem output)
};

// HF's Perceiver*Preprocessor: a batch of inputs to the encoder's input tokens [B, N, C].
class InputPreprocessor {
 public:
  virtual ~InputPreprocessor() = default;
  virtual int channels() const = 0;  // C
  virtual InputGeometry geometry(int height, int width) const = 0;
  // Throws Error(bad_input) "<why>" when the size is not admitted (called after the generic checks).
  virtual void check_input_size(const PerceiverConfig& config, int height, int width) const = 0;
  // Multiply-adds per image of this size spent in the preprocessor.
  virtual double macs(int height, int width) const = 0;
  // Floats of activations per image (memory planning).
  virtual size_t activation_floats(int height, int width) const = 0;
  // Sizes `state` for up to `batch` images of this size and fills its input-independent parts.
  virtual void prepare(PreprocessorState& state, int batch, int height, int width) const = 0;
  // pixels: [B, 3, H, W] -> inputs: [B, N, C].
  virtual void run(Backend& backend, PreprocessorState& state, const float* pixels, int batch, int height,
                   int width, float* inputs, const Tracer& trace) const = 0;
};

// HF's PerceiverEncoder: the latent array attends to the inputs once (cross-attention), then num_blocks x
// the same num_self_attends_per_block self-attention layers.
class PerceiverEncoder {
 public:
  PerceiverEncoder(LinearPacker& packer, const PerceiverConfig& config);
  struct Buffers {
    nn::LayerBuffers layer;
    std::vector<float> probs;  // traced attention probabilities
  };
  // inputs: [B, N, C] -> latents: [B, L, D].
  void run(Backend& backend, Precision precision, Buffers& buffers, const float* inputs, int batch, int tokens,
           float* latents, const Tracer& trace) const;
  double macs(int tokens) const;
  int num_latents() const { return num_latents_; }
  int d_latents() const { return d_latents_; }

 private:
  int num_latents_, d_latents_, num_blocks_;
  std::vector<float> latents_;  // [L, D]
  nn::PerceiverLayer cross_attention_;
  std::vector<nn::PerceiverLayer> self_attends_;  // shared by every block
};

// HF's Perceiver*Decoder (+ postprocessor): latents [B, L, D] to the model's outputs.
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual int num_outputs() const = 0;   // per image (classification: num_labels)
  virtual int feature_width() const = 0; // the decoder's output before its final layer
  virtual double macs(int num_latents) const = 0;
  // latents: [B, L, D] -> outputs: [B, num_outputs] (or nullptr), features: [B, feature_width] (or nullptr).
  virtual void run(Backend& backend, Precision precision, PerceiverEncoder::Buffers& buffers,
                   const float* latents, int batch, int num_latents, float* outputs, float* features,
                   const Tracer& trace) const = 0;
};

// The registry: config.json architecture -> its modules.
using PreprocessorFactory = std::unique_ptr<InputPreprocessor> (*)(LinearPacker&, const PerceiverConfig&);
using DecoderFactory = std::unique_ptr<Decoder> (*)(LinearPacker&, const PerceiverConfig&, int d_latents);

// Factories of the modules (one file each under src/model/preprocessors and src/model/decoders).
std::unique_ptr<InputPreprocessor> make_conv_image_preprocessor(LinearPacker&, const PerceiverConfig&);
std::unique_ptr<InputPreprocessor> make_fourier_image_preprocessor(LinearPacker&, const PerceiverConfig&);
std::unique_ptr<InputPreprocessor> make_learned_image_preprocessor(LinearPacker&, const PerceiverConfig&);
std::unique_ptr<Decoder> make_classification_decoder(LinearPacker&, const PerceiverConfig&, int d_latents);

// The factories of an architecture; throws Error(model) for one that is not registered.
struct ArchitectureEntry {
  const char* architecture;  // config.json "architectures"[0]
  PreprocessorFactory preprocessor;
  DecoderFactory decoder;
};
const ArchitectureEntry& find_architecture(const std::string& name);

}  // namespace perceiver
