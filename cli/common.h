// Pieces shared by the perceiver subcommands. The CLI is a user of the public library API only
// (include/perceiver/).
#pragma once

#include <CLI/CLI.hpp>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "perceiver/perceiver.h"

namespace perceiver::cli {

// Options every model-using subcommand takes.
struct ModelArgs {
  std::string model;    // directory or hub repo id
  std::string weights;  // explicit weights file
  std::string revision = "main";
  std::string precision = "fp32";
  std::string backend = "auto";
  int threads = 0;
  bool no_mmap = false;
  bool quiet = false;

  void add_to(CLI::App* app);
  ModelOptions options() const;
  // Model::load of `model` (a directory, or a hub id downloaded into the Hugging Face cache).
  std::unique_ptr<Model> load(bool preprocess_defaults = false) const;
};

// The images an argument list names: files as given, folders expanded to their images in sorted order.
std::vector<std::filesystem::path> expand_image_args(const std::vector<std::string>& args);

// Runs `body`; a perceiver::Error whose message does not already name `file` gets "<file>: " put in front,
// so that every failure about an input names it (e.g. a model refusing the input's size).
template <typename F>
auto naming_file(const std::string& file, F&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.rfind(file, 0) == 0) throw;
    throw Error(e.kind(), file + ": " + what);
  }
}

// A decoder for image files honouring --max-image-pixels; errors name the file.
std::function<Image(int64_t)> file_source(const std::vector<std::filesystem::path>& files,
                                          int64_t max_image_pixels = DecodeOptions{}.max_pixels);


void register_classify(CLI::App& app);
void register_preprocess(CLI::App& app);
void register_info(CLI::App& app);
void register_bench(CLI::App& app);
void register_embed(CLI::App& app);
void register_train_head(CLI::App& app);
void register_eval(CLI::App& app);
void register_attention(CLI::App& app);
void register_serve(CLI::App& app);

}  // namespace perceiver::cli
