// The Model implementation: a Perceiver IO model made of a preprocessor, the encoder and a decoder.
#pragma once

#include <memory>
#include <optional>

#include "formats/tensor_file.h"
#include "image/preprocess.h"
#include "model/config.h"
#include "model/modules.h"
#include "perceiver/perceiver.h"

namespace perceiver {

class PerceiverModel final : public Model {
 public:
  // Reads every weight through `reader` (a file, or random weights) and packs it for the backend.
  PerceiverModel(PerceiverConfig config, WeightReader& reader, const ModelOptions& options);

  const ModelInfo& info() const override { return info_; }
  void check_input_size(int height, int width) const override;
  double flops_per_image(int height, int width) const override;
  void forward(Context& context, const ForwardArgs& args) const override;
  void preprocessed_size(const Image& image, int* height, int* width) const override;
  void preprocess(const Image& image, float* out) const override;
  // The encoder's input tokens for an image size, and how they lie over its pixels (attention maps).
  InputGeometry input_geometry(int height, int width) const { return preprocessor_->geometry(height, width); }
  // preprocessor_config.json (or HF's defaults); throws Error(model) when the model has none.
  const PreprocessorConfig& image_processor_config() const { return image_processor(); }
  using Model::forward;
  using Model::preprocess;

  const PerceiverConfig& config() const { return config_; }
  // preprocessor_config.json (or HF's defaults); throws Error(model) when the model has none.
  const PreprocessorConfig& image_processor() const;

  // Set by the loader (src/api/load.cpp).
  void set_source(std::filesystem::path model_dir, std::filesystem::path weights_file, std::string config_json) {
    info_.model_dir = std::move(model_dir);
    info_.weights_file = std::move(weights_file);
    info_.config_json = std::move(config_json);
  }
  void set_preprocessor(const PreprocessorConfig& config);
  // Keeps the mapped weights file alive when some layer reads its weights in place.
  void keep_mapped_file(std::unique_ptr<TensorFile> file) {
    if (info_.weights_in_place) mapped_file_ = std::move(file);
  }

 protected:
  std::unique_ptr<Context::Impl> new_context_impl() const override;

 private:
  int auto_images_per_pass(int height, int width) const;
  void forward_pass(Context::Impl& context, const ForwardArgs& args) const;  // one pass of images

  std::unique_ptr<TensorFile> mapped_file_;  // weights read in place by the backend (fp32, safetensors)
  PerceiverConfig config_;
  ModelOptions options_;
  ModelInfo info_;
  std::unique_ptr<Backend> backend_;  // packed the weights; each context runs on a clone of it
  std::unique_ptr<InputPreprocessor> preprocessor_;
  std::unique_ptr<PerceiverEncoder> encoder_;
  std::unique_ptr<Decoder> decoder_;
  std::optional<PreprocessorConfig> image_processor_;  // preprocessor_config.json (or HF's defaults)
};

}  // namespace perceiver
