#include "common.h"

#include <algorithm>
#include <cctype>

#ifdef PERCEIVER_HAVE_HUB
#include "hub/hub.h"
#endif

namespace perceiver::cli {

void ModelArgs::add_to(CLI::App* app) {
  app->add_option("-m,--model", model,
                  "Model directory, or a Hugging Face hub repo id (e.g. deepmind/vision-perceiver-conv)")
      ->required();
  app->add_option("--weights", weights,
                  "Weights file to use (default: model.safetensors, else pytorch_model.bin)");
  app->add_option("--revision", revision, "Hub revision: branch, tag or commit (default: main)");
  app->add_option("--precision", precision, "fp32 or bf16 (bf16 weights and GEMM inputs, fp32 accumulation)")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  app->add_option("--backend", backend, "Kernels: auto, fast (oneDNN) or reference (plain loops)")
      ->check(CLI::IsMember({"auto", "fast", "reference"}));
  app->add_option("-t,--threads", threads, "Threads (default: all cores)")->check(CLI::Range(0, 1024));
  app->add_flag("--no-mmap", no_mmap,
                "Copy the weights into memory instead of reading fp32 weights in place from the mapped file");
  app->add_flag("-q,--quiet", quiet, "No progress bars or notes on stderr");
}

std::filesystem::path ModelArgs::resolve_dir() const {
  std::error_code ec;
  if (std::filesystem::is_directory(model, ec)) return model;
#ifdef PERCEIVER_HAVE_HUB
  if (is_hub_repo_id(model)) {
    HubOptions hub;
    hub.revision = revision;
    hub.quiet = quiet;
    return resolve_hub_model(model, hub);
  }
#endif
  throw Error(ErrorKind::model, model + ": not a model directory" +
#ifdef PERCEIVER_HAVE_HUB
                                    std::string(" nor a hub repo id")
#else
                                    std::string(" (this build has no hub support)")
#endif
  );
}

ModelOptions ModelArgs::options() const {
  ModelOptions o;
  o.weights_file = weights;
  o.precision = precision == "bf16" ? Precision::bf16 : Precision::fp32;
  o.threads = threads;
  o.backend = backend;
  o.mmap_weights = !no_mmap;
  return o;
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

PreprocessorConfig model_preprocessor(const std::filesystem::path& model_dir, bool use_defaults) {
  auto path = model_dir / "preprocessor_config.json";
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) return load_preprocessor_config(path);
  if (use_defaults) return PreprocessorConfig{};
  throw Error(ErrorKind::model, path.string() +
                                    ": missing; pass --preprocess-defaults to use PerceiverImageProcessor's "
                                    "defaults (crop 224/256, bicubic 224x224, ImageNet mean/std)");
}

}  // namespace perceiver::cli
