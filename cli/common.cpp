#include "common.h"

#include <algorithm>
#include <cctype>


namespace perceiver::cli {

void ModelArgs::add_to(CLI::App* app) {
  app->add_option("-m,--model", model,
                  "Model directory, or a Hugging Face hub repo id (e.g. deepmind/vision-perceiver-conv)")
      ->required();
  app->add_option("--weights", weights,
                  "Weights file to use (default: model.safetensors, else pytorch_model.bin)");
  app->add_option("--revision", revision, "Hub revision: branch, tag or commit (default: main)");
  app->add_option("--precision", precision, "fp32, bf16 (bf16 weights and GEMM inputs, fp32 accumulation) or int8 (quantised linear layers)")
      ->check(CLI::IsMember({"fp32", "bf16", "int8"}));
  app->add_option("--backend", backend, "Kernels: auto, fast (oneDNN) or reference (plain loops)")
      ->check(CLI::IsMember({"auto", "fast", "reference"}));
  app->add_option("-t,--threads", threads, "Threads (default: all cores)")->check(CLI::Range(0, 1024));
  app->add_flag("--no-mmap", no_mmap,
                "Copy the weights into memory instead of reading fp32 weights in place from the mapped file");
  app->add_flag("-q,--quiet", quiet, "No progress bars or notes on stderr");
}

ModelOptions ModelArgs::options() const {
  ModelOptions o;
  o.weights_file = weights;
  o.precision = parse_precision(precision);
  o.threads = threads;
  o.backend = backend;
  o.mmap_weights = !no_mmap;
  o.revision = revision;
  o.hub_progress = !quiet;
  return o;
}

std::unique_ptr<Model> ModelArgs::load(bool preprocess_defaults) const {
  ModelOptions o = options();
  o.preprocess_defaults = preprocess_defaults;
  return Model::load(model, o);
}

std::function<Image(int64_t)> file_source(const std::vector<std::filesystem::path>& files,
                                          int64_t max_image_pixels) {
  DecodeOptions decode;
  decode.max_pixels = max_image_pixels;
  return [files, decode](int64_t i) {
    const std::string name = files[size_t(i)].string();
    return naming_file(name, [&] { return decode_image_file(files[size_t(i)], decode); });
  };
}

namespace {
bool is_image_file(const std::filesystem::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".webp";
}
}  // namespace

std::vector<std::filesystem::path> expand_image_args(const std::vector<std::string>& args) {
  std::vector<std::filesystem::path> files;
  for (const auto& arg : args) {
    std::error_code ec;
    if (std::filesystem::is_directory(arg, ec)) {
      std::vector<std::filesystem::path> found;
      for (const auto& entry : std::filesystem::directory_iterator(arg, ec))
        if (entry.is_regular_file() && is_image_file(entry.path())) found.push_back(entry.path());
      if (ec) throw Error(ErrorKind::bad_input, arg + ": cannot list folder: " + ec.message());
      if (found.empty())
        throw Error(ErrorKind::bad_input, arg + ": folder holds no .jpg/.jpeg/.png/.webp images");
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.emplace_back(arg);  // a missing file is reported by the decoder, naming it
    }
  }
  return files;
}

}  // namespace perceiver::cli
