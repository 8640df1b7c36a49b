// Pieces shared by the perceiver subcommands.
#pragma once

#include <CLI/CLI.hpp>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "image/preprocess.h"
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
  // A directory as is; otherwise a hub repo id, downloaded into the Hugging Face cache.
  std::filesystem::path resolve_dir() const;
  ModelOptions options() const;
};

// The images an argument list names: files as given, folders expanded to their images in sorted order.
std::vector<std::filesystem::path> expand_image_args(const std::vector<std::string>& args);

// preprocessor_config.json of the model directory; HF's class defaults when `use_defaults`; else an error.
PreprocessorConfig model_preprocessor(const std::filesystem::path& model_dir, bool use_defaults);

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

void register_classify(CLI::App& app);
void register_preprocess(CLI::App& app);
void register_info(CLI::App& app);
void register_bench(CLI::App& app);
void register_embed(CLI::App& app);
void register_train_head(CLI::App& app);
void register_eval(CLI::App& app);
void register_attention(CLI::App& app);

}  // namespace perceiver::cli
