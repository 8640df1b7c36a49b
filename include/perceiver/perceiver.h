// perceiver.cpp: Perceiver IO image classifiers (Hugging Face checkpoints) in C++.
//
//   auto model = perceiver::Model::load("path/to/vision-perceiver-conv");
//   std::vector<float> logits(batch * model->info().num_labels);
//   model->classify(pixels, batch, 224, 224, logits.data());   // pixels: [batch, 3, 224, 224]
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "perceiver/error.h"

namespace perceiver {

enum class Precision { fp32, bf16 };

struct ModelOptions {
  std::filesystem::path weights_file;  // empty: model.safetensors if present, else pytorch_model.bin
  Precision precision = Precision::fp32;
  int threads = 0;               // <= 0: all cores available to the process
  std::string backend = "auto";  // "auto" (fastest available), "reference" (plain loops), "fast"
  // fp32 weights stored as F32 in model.safetensors (or in pytorch_model.bin's stored, aligned entries, as
  // torch.save writes them) are read in place from the memory-mapped file where the backend can (no copy:
  // faster loads, pages shared between processes). The file must then not be modified or truncated while the
  // model lives. false: copy every weight into memory at load.
  bool mmap_weights = true;
  // forward() runs a batch through the network this many images at a time (bounded memory; on CPUs larger
  // passes are not faster once GEMMs have a few hundred rows). <= 0: as many as fit in about 32 MB of
  // activations (one for the ImageNet models, dozens for small ones), and at least one per 8 threads.
  int images_per_pass = 0;
};

struct ModelInfo {
  std::string architecture;  // e.g. "PerceiverForImageClassificationConvProcessing"
  std::string backend;       // the kernels in use
  int num_labels = 0;
  std::vector<std::string> labels;  // id2label, index order
  int num_latents = 0, d_latents = 0;
  int fixed_image_height = 0, fixed_image_width = 0;  // learned model: the only size it admits; else 0
  int64_t num_parameters = 0;
  bool weights_in_place = false;  // some layers read their weights straight from the mapped weights file
};

// Called with intermediate activations during forward() when set (tests, debugging). Names and shapes follow
// the golden vectors' manifest.json, e.g. "preproc_output" [B, N, C], "latents_after_self_attn_b0_l1" [B, L,
// D].
using TraceFn =
    std::function<void(std::string_view name, const std::vector<int64_t>& shape, const float* data)>;

struct ForwardArgs {
  const float* pixels = nullptr;  // [batch, 3, height, width], normalised
  int batch = 1, height = 0, width = 0;
  float* logits = nullptr;            // [batch, num_labels] or nullptr
  float* latents = nullptr;           // [batch, num_latents, d_latents] encoder output, or nullptr
  float* decoder_features = nullptr;  // [batch, d_latents] decoder output before the final linear, or nullptr
  const TraceFn* trace = nullptr;
  bool trace_attention_probs = false;  // also trace softmax probabilities (slow: materialises them)
};

class Model {
 public:
  // Reads config.json and the weights from `model_dir`. Throws perceiver::Error.
  static std::unique_ptr<Model> load(const std::filesystem::path& model_dir,
                                     const ModelOptions& options = {});
  // A model with made-up weights (benchmarks, tests): `config_json` is the text of a config.json; the same
  // seed gives the same weights. Throws perceiver::Error for a bad config.
  static std::unique_ptr<Model> create_random(const std::string& config_json, uint64_t seed = 1,
                                              const ModelOptions& options = {});
  virtual ~Model() = default;

  virtual const ModelInfo& info() const = 0;
  // Throws Error(bad_input) when the image size is not admitted by the model.
  virtual void check_input_size(int height, int width) const = 0;
  // FLOPs (2 x multiply-adds) of one image of this size.
  virtual double flops_per_image(int height, int width) const = 0;
  virtual void forward(const ForwardArgs& args) = 0;

  // pixels: [batch, 3, height, width] -> logits: [batch, num_labels]
  void classify(const float* pixels, int batch, int height, int width, float* logits) {
    ForwardArgs args;
    args.pixels = pixels;
    args.batch = batch;
    args.height = height;
    args.width = width;
    args.logits = logits;
    forward(args);
  }
};

}  // namespace perceiver
