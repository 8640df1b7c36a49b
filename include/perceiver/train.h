// perceiver.cpp: a new classifier on your own images. The encoder stays frozen; a fresh classification
// decoder (HF's PerceiverClassificationDecoder: one query, one cross-attention layer, a final linear) is
// trained with AdamW on its latents and written as a Hugging Face model directory that Model::load, the CLI
// and `transformers` read. Deterministic: the same inputs and options give bit-identical weights.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "perceiver/perceiver.h"

namespace perceiver::train {

struct LabelledFiles {
  std::vector<std::filesystem::path> files;
  std::vector<int> labels;           // index into classes
  std::vector<std::string> classes;  // sorted class names
};

// `data` is either
//   - a folder with one sub-folder per class (the sub-folder's name is the label) holding .jpg/.jpeg/.png/
//     .webp images (searched recursively, sorted); sub-folders without images are skipped, or
//   - a .csv file of `file,label` lines (an optional first line "file,label" is skipped; relative paths are
//     relative to the CSV's folder; a field may be double-quoted).
// Classes are sorted by name; files keep folder (sorted) or CSV order. Throws Error(bad_input).
LabelledFiles scan_labelled_data(const std::filesystem::path& data);

// Maps each data class to the model label of the same name: exact match first, else the same after
// lowercasing and dropping everything but letters and digits ("t_shirt_top" matches "T-shirt/top"). Throws
// Error(bad_input) naming the classes that match nothing.
std::vector<int> match_classes(const std::vector<std::string>& classes, const std::vector<std::string>& labels);

struct EpochStats {
  int epoch = 0, epochs = 0;                  // 1-based
  double train_loss = 0, train_accuracy = 0;  // running means over the epoch's batches
  bool has_val = false;
  double val_loss = 0, val_accuracy = 0;
  double seconds = 0;
};

struct TrainHeadOptions {
  int epochs = 10;
  double lr = 1e-3;      // peak learning rate
  double warmup = 0.05;  // fraction of all steps with linear warm-up; then cosine decay to 0
  int batch_size = 64;   // images per optimiser step
  double weight_decay = 1e-2;
  double val_split = 0.1;  // fraction of each class held out for validation, in [0, 1)
  uint64_t seed = 0;       // initialisation, split and shuffles
  int encode_batch = 32;   // images per encoder forward pass
  // Encoder latents stay in memory up to this size, else in an unlinked temporary file in cache_dir.
  uint64_t max_memory_bytes = uint64_t(4) << 30;
  std::filesystem::path cache_dir;
  bool progress = false;  // progress bars on stderr
};

// Throws Error(usage) naming the option (as the CLI's flag) that is out of range.
void check_options(const TrainHeadOptions& options);

struct TrainHeadResult {
  std::vector<EpochStats> epochs;
  int64_t train_images = 0, val_images = 0;
};

// Encodes every image of `data` with `model` (loaded from a directory: its config, weights and
// preprocessor are the new model's), trains a head for data.classes and writes `out_dir`: config.json
// (id2label of the classes), preprocessor_config.json, model.safetensors (the encoder's tensors byte for byte,
// the new decoder's). Throws Error(usage / bad_input / model / io).
TrainHeadResult train_classifier_head(const Model& model, const LabelledFiles& data,
                                      const std::filesystem::path& out_dir, const TrainHeadOptions& options);

}  // namespace perceiver::train
