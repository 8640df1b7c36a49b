// Model::load: a model directory or a hub id -> a PerceiverModel with its image processor.
#include <fstream>
#include <sstream>

#include "formats/tensor_file.h"
#include "model/perceiver_model.h"

#ifdef PERCEIVER_HAVE_HUB
#include "hub/hub.h"
#endif

namespace perceiver {
namespace {

const char* const kMissingPreprocessor =
    ": missing; pass --preprocess-defaults (ModelOptions::preprocess_defaults) to use PerceiverImageProcessor's "
    "defaults (crop 224/256, bicubic 224x224, ImageNet mean/std)";

std::string read_text(const std::filesystem::path& path);

}  // namespace

std::filesystem::path resolve_model_dir(const std::filesystem::path& model, const ModelOptions& options) {
  std::error_code ec;
  if (std::filesystem::is_directory(model, ec)) return model;
  const std::string name = model.string();
#ifdef PERCEIVER_HAVE_HUB
  if (is_hub_repo_id(name)) {
    HubOptions hub;
    hub.revision = options.revision;
    hub.quiet = !options.hub_progress;
    return resolve_hub_model(name, hub);
  }
  throw Error(ErrorKind::model, name + ": not a model directory nor a hub repo id");
#else
  (void)options;
  throw Error(ErrorKind::model, name + ": not a model directory (this build has no hub support)");
#endif
}

namespace {

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void attach_image_processor(PerceiverModel& model, const std::filesystem::path& dir, bool use_defaults) {
  const auto path = dir / "preprocessor_config.json";
  std::error_code ec;
  if (std::filesystem::exists(path, ec))
    model.set_preprocessor(load_preprocessor_config(path));
  else if (use_defaults)
    model.set_preprocessor(PreprocessorConfig{});
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::filesystem::path& model_path, const ModelOptions& options) {
  const std::filesystem::path model_dir = resolve_model_dir(model_path, options);
  PerceiverConfig config = load_config(model_dir / "config.json");
  std::filesystem::path weights_path = options.weights_file;
  if (weights_path.empty()) {
    weights_path = model_dir / "model.safetensors";
    if (!std::filesystem::exists(weights_path)) weights_path = model_dir / "pytorch_model.bin";
    if (!std::filesystem::exists(weights_path))
      throw Error(ErrorKind::model,
                  model_dir.string() + ": neither model.safetensors nor pytorch_model.bin found");
  }
  auto file = open_weights(weights_path);
  WeightReader reader(*file);
  auto model = std::make_unique<PerceiverModel>(std::move(config), reader, options);
  model->keep_mapped_file(std::move(file));  // else the file and its mapping go away here
  model->set_source(model_dir, weights_path, read_text(model_dir / "config.json"));
  attach_image_processor(*model, model_dir, options.preprocess_defaults);
  return model;
}

std::unique_ptr<Model> Model::create_random(const std::string& config_json, uint64_t seed,
                                            const ModelOptions& options) {
  WeightReader reader(seed);
  auto model = std::make_unique<PerceiverModel>(parse_config(config_json, "config.json"), reader, options);
  model->set_source({}, {}, config_json);
  if (options.preprocess_defaults) model->set_preprocessor(PreprocessorConfig{});
  return model;
}

void PerceiverModel::set_preprocessor(const PreprocessorConfig& config) {
  image_processor_ = config;
  info_.has_preprocessor = true;
  info_.image_height = config.do_resize ? config.height : 0;
  info_.image_width = config.do_resize ? config.width : 0;
}

const PreprocessorConfig& PerceiverModel::image_processor() const {
  if (!image_processor_)
    throw Error(ErrorKind::model,
                (info_.model_dir.empty() ? std::string("model") : (info_.model_dir / "preprocessor_config.json").string()) +
                    kMissingPreprocessor);
  return *image_processor_;
}

void PerceiverModel::preprocessed_size(const Image& image, int* height, int* width) const {
  perceiver::preprocessed_size(image_processor(), image, height, width);
}

void PerceiverModel::preprocess(const Image& image, float* out) const {
  perceiver::preprocess(image, image_processor(), out);
}

}  // namespace perceiver

namespace perceiver {

struct ImageProcessor::Config {
  PreprocessorConfig config;
};

ImageProcessor ImageProcessor::load(const std::filesystem::path& model, const ModelOptions& options) {
  const std::filesystem::path dir = resolve_model_dir(model, options);
  const auto path = dir / "preprocessor_config.json";
  auto config = std::make_shared<Config>();
  std::error_code ec;
  if (std::filesystem::exists(path, ec))
    config->config = load_preprocessor_config(path);
  else if (!options.preprocess_defaults)
    throw Error(ErrorKind::model, path.string() + kMissingPreprocessor);
  return ImageProcessor(std::move(config));
}

void ImageProcessor::preprocessed_size(const Image& image, int* height, int* width) const {
  perceiver::preprocessed_size(config_->config, image, height, width);
}

void ImageProcessor::preprocess(const Image& image, float* out) const {
  perceiver::preprocess(image, config_->config, out);
}

Tensor ImageProcessor::preprocess(const Image& image) const {
  Tensor t;
  int h = 0, w = 0;
  preprocessed_size(image, &h, &w);
  t.shape = {1, 3, h, w};
  t.data.resize(size_t(3) * h * w);
  preprocess(image, t.data.data());
  return t;
}

}  // namespace perceiver
