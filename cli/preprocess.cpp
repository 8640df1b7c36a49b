// perceiver preprocess: what the model would see for an image, as float32 [1, 3, H, W].
#include "common.h"
#include "perceiver/io.h"

namespace perceiver::cli {
namespace {

struct PreprocessArgs {
  std::string model;
  std::string image;
  std::string out;
  bool preprocess_defaults = false;
  std::string revision = "main";
  int64_t max_image_pixels = DecodeOptions{}.max_pixels;
};

void run_preprocess(const PreprocessArgs& args) {
  DecodeOptions decode;
  decode.max_pixels = args.max_image_pixels;
  const Image image = decode_image_file(args.image, decode);
  ModelOptions options;
  options.revision = args.revision;
  options.preprocess_defaults = args.preprocess_defaults;
  const ImageProcessor processor = ImageProcessor::load(args.model, options);
  const Tensor pixels = naming_file(args.image, [&] { return processor.preprocess(image); });
  write_npy_f32(args.out, pixels.shape, pixels.data.data());
}

}  // namespace

void register_preprocess(CLI::App& app) {
  auto args = std::make_shared<PreprocessArgs>();
  CLI::App* cmd =
      app.add_subcommand("preprocess", "Decode and preprocess one image as the model would see it");
  cmd->add_option("-m,--model", args->model, "Model directory or hub repo id (its preprocessor_config.json)")
      ->required();
  cmd->add_option("image", args->image, "Image file (JPEG, PNG, WebP)")->required();
  cmd->add_option("-o,--out", args->out, "Output .npy, float32 [1, 3, H, W]")->required();
  cmd->add_option("--revision", args->revision, "Hub revision (default: main)");
  cmd->add_flag("--preprocess-defaults", args->preprocess_defaults,
                "Without preprocessor_config.json, use PerceiverImageProcessor's defaults");
  cmd->add_option(
         "--max-image-pixels", args->max_image_pixels,
         "Refuse images above twice this many pixels, as Pillow does (default 89478485; 0: no limit)")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([args]() { run_preprocess(*args); });
}

}  // namespace perceiver::cli
