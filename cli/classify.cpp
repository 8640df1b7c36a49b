// perceiver classify: images (or preprocessed pixels) in, top-k labels out.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>

#include "common.h"
#include "perceiver/io.h"

namespace perceiver::cli {
namespace {

struct ClassifyArgs {
  ModelArgs model;
  std::vector<std::string> images;
  std::string pixels;
  std::string logits_out;
  int top_k = 5;
  int batch_size = 8;
  bool json = false;
  bool preprocess_defaults = false;
  int64_t max_image_pixels = DecodeOptions{}.max_pixels;
};

// Labels come from config.json: control characters (terminal escapes) are shown as '?' in text output.
std::string printable_label(std::string label) {
  for (char& ch : label)
    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) ch = '?';
  return label;
}

void print_prediction(const ClassifyArgs& args, const ModelInfo& info, const std::string& name, int index,
                      const float* logits) {
  const std::vector<Prediction> pred = top_k(logits, info.labels, args.top_k);
  if (args.json) {
    nlohmann::json j;
    j["file"] = name;
    if (index >= 0) j["index"] = index;
    j["labels"] = nlohmann::json::array();
    j["label_ids"] = nlohmann::json::array();
    j["probabilities"] = nlohmann::json::array();
    for (const auto& p : pred) {
      j["labels"].push_back(p.label);
      j["label_ids"].push_back(p.id);
      j["probabilities"].push_back(p.probability);
    }
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::cout << name;
    if (index >= 0) std::cout << " [" << index << "]";
    std::cout << "\n";
    for (const auto& p : pred) {
      char line[64];
      std::snprintf(line, sizeof line, "  %6.2f%%  ", 100.0 * p.probability);
      std::cout << line << printable_label(p.label) << "\n";
    }
  }
}

bool all_finite(const std::vector<float>& values) {
  for (float v : values)
    if (!std::isfinite(v)) return false;
  return true;
}

// Finite inputs, non-finite logits: the weights hold NaN/Inf (or overflow); no made-up probabilities.
void check_logits(const std::vector<float>& logits, const std::filesystem::path& model_dir) {
  if (!all_finite(logits))
    throw Error(ErrorKind::model, model_dir.string() +
                                      ": the model computed NaN or infinite logits (its weights "
                                      "hold NaN or infinite values, or overflow)");
}

void run_classify(const ClassifyArgs& args) {
  if (args.pixels.empty() == args.images.empty())
    throw Error(ErrorKind::usage, "classify: give either image files/folders or --pixels IN.npy");
  if (args.top_k < 1) throw Error(ErrorKind::usage, "classify: --top-k must be at least 1");

  // Read and check the inputs before the (slower) model load, so bad input fails fast.
  NpyArray pixel_array;
  std::vector<std::filesystem::path> files;
  if (!args.pixels.empty()) {
    pixel_array = read_npy(args.pixels);
    if (pixel_array.shape.size() != 4 || pixel_array.shape[1] != 3 || pixel_array.shape[0] < 1)
      throw Error(ErrorKind::bad_input, args.pixels + ": expected float32 pixels [B, 3, H, W]");
    if (pixel_array.dtype != "f4")
      throw Error(ErrorKind::bad_input,
                  args.pixels + ": expected dtype float32, found '" + pixel_array.dtype + "'");
  } else {
    files = expand_image_args(args.images);
  }

  auto model = args.model.load(args.preprocess_defaults);
  const ModelInfo& info = model->info();
  const std::filesystem::path& dir = info.model_dir;
  if (!files.empty() && !info.has_preprocessor) {
    int h, w;
    model->preprocessed_size(Image{}, &h, &w);  // throws: no preprocessor_config.json
  }
  auto context = model->create_context();
  const int num_labels = info.num_labels;
  std::vector<float> all_logits;

  if (!args.pixels.empty()) {
    const int B = static_cast<int>(pixel_array.shape[0]), H = static_cast<int>(pixel_array.shape[2]),
              W = static_cast<int>(pixel_array.shape[3]);
    naming_file(args.pixels, [&] { model->check_input_size(H, W); });
    std::vector<float> pixels = pixel_array.to_f32();
    if (!all_finite(pixels))
      throw Error(ErrorKind::bad_input, args.pixels + ": holds NaN or infinite values");
    all_logits.resize(size_t(B) * num_labels);
    context->logits(pixels.data(), B, H, W, all_logits.data());
    check_logits(all_logits, dir);
    if (!args.logits_out.empty()) write_npy_f32(args.logits_out, {B, num_labels}, all_logits.data());
    for (int b = 0; b < B; ++b)
      print_prediction(args, info, args.pixels, b, &all_logits[size_t(b) * num_labels]);
    return;
  }

  // Images: decoded and preprocessed a batch at a time, in parallel (consecutive images of equal
  // preprocessed size run together); results printed as each batch is done.
  std::vector<float> batch_logits;
  context->run_images(int64_t(files.size()), file_source(files, args.max_image_pixels), args.batch_size,
                      Context::ImageBatch::logits_output, [&](const Context::ImageBatch& b) {
                        batch_logits.assign(b.logits, b.logits + size_t(b.count) * num_labels);
                        check_logits(batch_logits, dir);
                        for (int i = 0; i < b.count; ++i)
                          print_prediction(args, info, files[size_t(b.first + i)].string(), -1,
                                           &batch_logits[size_t(i) * num_labels]);
                        std::cout.flush();
                        all_logits.insert(all_logits.end(), batch_logits.begin(), batch_logits.end());
                      },
                      [&](int64_t i) { return files[size_t(i)].string(); });
  if (!args.logits_out.empty())
    write_npy_f32(args.logits_out, {static_cast<int64_t>(files.size()), num_labels}, all_logits.data());
}

}  // namespace

void register_classify(CLI::App& app) {
  auto args = std::make_shared<ClassifyArgs>();
  CLI::App* cmd =
      app.add_subcommand("classify", "Classify images (or preprocessed pixels) and print the top-k labels");
  args->model.add_to(cmd);
  cmd->add_option("images", args->images,
                  "Image files (JPEG, PNG, WebP) or folders of images (sorted order)");
  cmd->add_option("--pixels", args->pixels, "Preprocessed float32 pixels [B,3,H,W] (.npy) instead of images");
  cmd->add_option("--logits-out", args->logits_out,
                  "Write float32 logits [num_images, num_labels] to this .npy");
  cmd->add_option("-k,--top-k", args->top_k, "Labels printed per image (default 5)");
  cmd->add_option("-b,--batch-size", args->batch_size, "Images per forward pass (default 8)");
  cmd->add_flag("--json", args->json, "One JSON object per image: file, labels, label_ids, probabilities");
  cmd->add_flag("--preprocess-defaults", args->preprocess_defaults,
                "Without preprocessor_config.json, use PerceiverImageProcessor's defaults");
  cmd->add_option(
         "--max-image-pixels", args->max_image_pixels,
         "Refuse images above twice this many pixels, as Pillow does (default 89478485; 0: no limit)")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([args]() { run_classify(*args); });
}

}  // namespace perceiver::cli
