// Writes a trained head as a Hugging Face model directory next to its frozen encoder.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "image/preprocess.h"
#include "train/head.h"

namespace perceiver::train {

// config.json of `source_dir` as JSON text, initializer_range (HF's default 0.02 when absent).
double config_initializer_range(const std::filesystem::path& source_dir);

// Creates `out_dir` (if needed) holding
//   config.json              the source's, with id2label / label2id / num_labels for `labels`
//   preprocessor_config.json the source's (or `prep` written out when the source has none)
//   model.safetensors        every tensor of the source's weights except the decoder's, byte for byte, plus
//   the
//                            head's tensors (F32) under HF's names
// `weights_file`: the source's weights (empty: model.safetensors, else pytorch_model.bin). Each file is
// written atomically. Throws Error(model) for a bad source, Error(io) when writing fails.
void write_model_dir(const std::filesystem::path& source_dir, const std::filesystem::path& weights_file,
                     const std::filesystem::path& out_dir, ClassifierHead<float>& head,
                     const std::vector<std::string>& labels, const PreprocessorConfig& prep);

// PreprocessorConfig as preprocessor_config.json text (PerceiverImageProcessor's current format).
std::string preprocessor_config_json(const PreprocessorConfig& prep);

}  // namespace perceiver::train
